"""Stop 44: how long XLA:CPU takes to compile one eager random draw, by shape (jaxlib 0.10.2).

  python experiments/cpu_speed/results/stop44_zen3/random_draw_compile.py

Figures in random_draw_probe.txt beside this file.
"""

import time

import jax

SHAPES = [(32, 1, 1, 1), (128, 1, 1, 1), (8, 1, 1, 1), (3, 3, 8, 12), (2, 4, 4, 8),
          (16, 7, 7, 64), (3, 11, 13, 8)]


def main() -> None:
  key = jax.random.key(0)
  for shape in SHAPES:
    start = time.perf_counter()
    jax.jit(lambda k, shape=shape: jax.random.uniform(k, shape)).lower(key).compile()
    print(shape, round(time.perf_counter() - start, 2), flush=True)


if __name__ == "__main__":
  main()

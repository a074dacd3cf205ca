"""Stop 43: `make train`'s step fed with the host's crops (`data.crop_on_device=False`) and
with the crops cut in the step (True, the config's), each against the step on one fixed batch
of its own kind, the four alternated at every step in one process by `loop_parts.measure`
(sound on a one-device CPU, where the step runs inline). Percentages are on the fixed image
batch's step.

  GLIBC_TUNABLES=... python experiments/cpu_speed/results/stop43_zen3/crop_on_device_ab.py 1200
"""

import os
import sys
from collections.abc import Callable
from typing import Any

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), *[os.pardir] * 4))
sys.path[:0] = [REPO_ROOT, os.path.join(REPO_ROOT, "experiments", "cpu_speed")]

import loop_parts  # noqa: E402  (configures JAX as the tools do)

import jax  # noqa: E402

from cnn_jax import bench, cli  # noqa: E402


def feed(crop_on_device: bool) -> bench.FeedCheck:
  config = cli.load_config_file(os.path.join(REPO_ROOT, "configs/lenet5_mnist.py"), "")
  config.unlock()
  config.data.crop_on_device = crop_on_device
  return bench.prepare_jax(config.model.name, config=config, with_data=True).feed


def steps_of(unit: Callable[[], Any]) -> Callable[[int], Any]:
  def run(steps: int) -> Any:
    for _ in range(steps):
      out = unit()
    return jax.block_until_ready(out)
  return run


def main() -> None:
  rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 1200
  host, device = feed(False), feed(True)
  units = {"fixed_images": host.step_alone, "fed_host_crops": host.step_with_data,
           "fixed_indices": device.step_alone, "fed_device_crops": device.step_with_data}
  result = loop_parts.measure({kind: steps_of(unit) for kind, unit in units.items()}, 1, rounds)
  base = result["fixed_images"]["wall_median_s"]
  for kind, r in result.items():
    median = r["wall_median_s"]
    print(f"{kind:17s} {median * 1e3:6.2f} ms/step (median of {rounds}), "
          f"{100 * (median / base - 1):+5.1f} % on fixed_images", flush=True)


if __name__ == "__main__":
  main()

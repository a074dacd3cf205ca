"""Stop 43's probe for issue 21's item 3: LeNet-5's step with the embedded set's shifted crops
cut inside the jitted step (only the rows' indices, offsets and labels cross each step, the
normalised padded set resident on the device) against the loop's feed and the step on one
fixed batch, the three alternated at every step (sound on a one-device CPU, where the step
runs inline). A measurement, not the loop's code: it wraps the loop's own jitted step.

  GLIBC_TUNABLES=... python experiments/cpu_speed/results/stop43_zen3/device_crop_probe.py 1500
"""

import os
import statistics
import sys
import time

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), *[os.pardir] * 4))
sys.path.insert(0, REPO_ROOT)

from cnn_jax import hostenv  # noqa: E402

hostenv.configure_jax()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from cnn_jax import bench, cli, data, parallel, train  # noqa: E402


def main() -> None:
  rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 900
  captured = {}
  jit_train_step, put_state = train.jit_train_step, parallel.put_state

  def capture_step(*args, **kwargs):
    captured["step"] = jit_train_step(*args, **kwargs)
    return captured["step"]

  def capture_state(state, shardings):
    out = put_state(state, shardings)
    captured["leaves"] = [jnp.array(x, copy=True) for x in jax.tree.leaves(out)]
    return out

  train.jit_train_step, parallel.put_state = capture_step, capture_state
  config = cli.load_config_file(os.path.join(REPO_ROOT, "configs/lenet5_mnist.py"), "")
  feed = bench.prepare_jax(config.model.name, config=config, with_data=True).feed
  step_fn, leaves = captured["step"], captured["leaves"]

  batches = data.create_datasets(config)[0]
  fn, transform, records = batches._fn, batches.transform, batches.records
  pad = transform.max_shift
  padded = np.pad(records.images, ((0, 0), (pad, pad), (pad, pad), (0, 0))).astype(np.float32)
  padded -= transform.mean
  padded /= transform.std
  resident = jnp.asarray(padded)
  h, w, c = records.images.shape[1:]

  def crop(resident, index, offset):
    return jax.vmap(lambda i, a, b: lax.dynamic_slice(resident, (i, a, b, 0), (1, h, w, c))[0])(
        index, offset[:, 0], offset[:, 1])

  cropped_step = jax.jit(
      lambda leaves, resident, index, offset, label: step_fn(
          leaves, {"image": crop(resident, index, offset), "label": label}),
      donate_argnums=(0,))

  def rows(step):  # What the batch function draws, without the gather.
    epoch, within = divmod(step * fn.global_batch_size + fn.first_row, fn.epoch_length)
    index = fn.permutation(epoch)[within:within + fn.local_batch_size]
    rng = np.random.default_rng([fn.seed, step, 1])
    offset = rng.integers(0, 2 * pad + 1, size=(fn.global_batch_size, 2))[
        fn.first_row:fn.first_row + len(index)]
    return index.astype(np.int32), offset.astype(np.int32), records.labels[index].astype(np.int32)

  for step in (0, 7, 40):  # The crops are the loop's batches, bit for bit.
    index, offset, label = rows(step)
    host = batches.batch(step)
    assert np.array_equal(np.asarray(jax.jit(crop)(resident, index, offset)), host["image"])
    assert np.array_equal(label, host["label"])
  print("crops equal to the loop's batches: yes")

  holder = {"leaves": leaves, "step": 0}

  def device_crop():
    index, offset, label = rows(holder["step"])
    holder["step"] += 1
    holder["leaves"], out = cropped_step(holder["leaves"], resident, index, offset, label)
    return out

  units = {"fixed": feed.step_alone, "fed": feed.step_with_data, "device_crop": device_crop}
  for unit in units.values():
    for _ in range(20):
      out = unit()
    jax.block_until_ready(out)
  times = {kind: [] for kind in units}
  order = list(units)
  for round_ in range(rounds):
    for kind in (order if round_ % 2 == 0 else order[::-1]):
      start = time.perf_counter()
      jax.block_until_ready(units[kind]())
      times[kind].append(time.perf_counter() - start)
  fixed = statistics.median(times["fixed"])
  for kind, seconds in times.items():
    median = statistics.median(seconds)
    print(f"{kind:12s} {median * 1e3:6.2f} ms/step (median of {rounds}), "
          f"{100 * (median / fixed - 1):+5.1f} % on fixed", flush=True)


if __name__ == "__main__":
  main()

"""Entry point: python -m cnn_jax.main --config configs/X.py --workdir DIR [--config.a.b=v]

User errors (unknown model, bad override, missing config file, unwritable workdir, batch not
divisible by the devices, ...) end with one line on stderr and exit code 2.
"""

from __future__ import annotations

import ml_collections
from absl import flags

from cnn_jax import cli
from cnn_jax.errors import UserError

FLAGS = flags.FLAGS


def define_flags() -> None:
  cli.define_config_flag()
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
  flags.DEFINE_string(
      "coordinator_address", None, "host:port of process 0, for multi-process runs "
      "(default: $JAX_COORDINATOR_ADDRESS; unset = single process).")
  flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
  flags.DEFINE_integer("process_id", None, "This process's index, 0..N-1.")


def main(argv: list[str]) -> None:
  cli.no_extra_args(argv)
  config = cli.config_value("config", "configs/lenet5_mnist.py")
  if not FLAGS.workdir:
    raise UserError("--workdir is required")

  # Imported after flag parsing: JAX reads XLA_FLAGS and platform flags at backend start.
  from cnn_jax import parallel

  parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                  FLAGS.process_id)
  # Several processes: one failing stops the others at once, naming it.
  with parallel.stop_all_on_failure():
    try:
      final = run_training(config, FLAGS.workdir)
    except FloatingPointError as e:  # Diverged: say so in one line, keep the exit non-zero.
      cli.fail(str(e), code=1)
  for line in final_lines(final):
    print(line, flush=True)


def run_training(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float] | None:
  """The run a config asks for: FCMAE pre-training (which also exports the encoder) or
  classification (config.task). The sweep and SLURM jobs run points through this too."""
  from cnn_jax import train
  if config.task == "fcmae":
    from cnn_jax import fcmae
    return fcmae.pretrain(config, workdir)
  if config.task == "classification":
    return train.train_and_evaluate(config, workdir)
  raise UserError(f"unknown task {config.task!r}; choose classification or fcmae")


def final_lines(final: dict[str, float] | None) -> list[str]:
  """The run's last words: top-1, top-5 and loss on one line, the EMA's on a second (when the
  run keeps one); the eval loss alone for FCMAE. final_metrics.json holds the same figures."""
  if not final:
    return []
  if "accuracy" not in final:
    return [f"final eval loss: {final['loss']:.4f}"]
  lines = []
  for prefix, label in (("", ""), ("ema_", " (EMA)")):
    if f"{prefix}accuracy" not in final:
      continue
    top5 = final.get(f"{prefix}top5_accuracy")  # a custom task's summary may lack it
    lines.append(f"final test accuracy{label}: {final[f'{prefix}accuracy']:.4f}"
                 + (f", top-5 {top5:.4f}" if top5 is not None else "")
                 + f" (loss {final[f'{prefix}loss']:.4f})")
  return lines


def run() -> None:
  cli.run(main, define_flags)


if __name__ == "__main__":
  run()

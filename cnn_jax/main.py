"""Entry point: python -m cnn_jax.main --config configs/X.py --workdir DIR [--config.a.b=v]

User errors (unknown model, bad override, missing config file, unwritable workdir, batch not
divisible by the devices, ...) end with one line on stderr and exit code 2.
"""

from __future__ import annotations

import ast
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from cnn_jax.errors import UserError

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file with get_config(); override fields with "
    "--config.field=value.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for multi-process runs "
    "(default: $JAX_COORDINATOR_ADDRESS; unset = single process).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0..N-1.")


def fail(message: str) -> None:
  """One line on stderr, exit code 2: the contract for every user error."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def _one_line(e: BaseException) -> str:
  # KeyError's str() is the repr of its message (sometimes of a repr, when config_flags
  # re-raises); unwrap to the message itself.
  text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
  while len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
    try:
      text = str(ast.literal_eval(text))
    except (ValueError, SyntaxError):
      break
  lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
  return " ".join(lines) or type(e).__name__


def parse_flags(argv: list[str]) -> list[str]:
  try:
    return FLAGS(argv)
  except flags.Error as e:
    fail(_one_line(e))
  except KeyError as e:  # An override naming a field the config does not have.
    fail(f"unknown config field in an override: {_one_line(e)}")
  except (AttributeError, ValueError, TypeError, OSError, SyntaxError) as e:
    # Raised while loading or overriding the config file.
    fail(f"bad --config: {_one_line(e)}")
  raise AssertionError("unreachable")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS["config"].present:  # get_config_filename raises on an unparsed flag
    fail("--config is required, e.g. --config configs/lenet5_mnist.py")
  config_path = config_flags.get_config_filename(FLAGS["config"])
  # "path.py:arg" passes arg to get_config (config_flags splits at the first colon).
  if not os.path.isfile(config_path.split(":", 1)[0]):
    fail(f"config file not found: {config_path.split(':', 1)[0]}")
  try:
    config = _CONFIG.value
  except OSError as e:  # The file exists but failed to load: show why, in one line.
    fail(f"bad --config: {_one_line(e.__cause__ or e)}")
  if not _WORKDIR.value:
    fail("--workdir is required")
  if not FLAGS["verbosity"].present:
    # Orbax logs every save step at INFO; the progress line is what users want to read.
    logging.set_verbosity(logging.WARNING)

  # Imported after flag parsing: JAX reads XLA_FLAGS and platform flags at import.
  from cnn_jax import parallel, train

  try:
    parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if config.task == "fcmae":
      from cnn_jax import fcmae
      final = fcmae.pretrain(config, _WORKDIR.value)
    elif config.task == "classification":
      final = train.train_and_evaluate(config, _WORKDIR.value)
    else:
      raise UserError(f"unknown task {config.task!r}; choose classification or fcmae")
  except UserError as e:
    fail(str(e))
  except FloatingPointError as e:  # Diverged: say so in one line, keep the exit non-zero.
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  for line in final_lines(final):
    print(line, flush=True)


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
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()

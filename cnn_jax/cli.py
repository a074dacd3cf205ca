"""What every command-line tool shares: one way to start, one way to fail.

A tool defines its flags in a function and hands it with its `main(argv)` to `run`:

    def define_flags() -> None:
      flags.DEFINE_string("model", None, "Registered model name.")

    def main(argv: list[str]) -> None:
      ...raise UserError("...") for anything the user must fix...

    if __name__ == "__main__":
      cli.run(main, define_flags)

Flags are defined only when the tool runs, so tests and notebooks can import any number of
tools side by side. `run` applies the process settings before JAX starts its backend (XLA:CPU
flags, the persistent compilation cache and tracing without a quadratic for every tool, and a
re-run with glibc's malloc settings for the heavy ones; see hostenv.py: importing cnn_jax
applies none of them), turns a flag or config error and any `UserError` into one `error:` line
on stderr with exit code 2, and keeps absl's INFO logging quiet unless `--verbosity` is given.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from cnn_jax import hostenv
from cnn_jax.errors import UserError

FLAGS = flags.FLAGS
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fail(message: str, code: int = 2) -> NoReturn:
  """One line on stderr and a non-zero exit: the contract for every user error."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def one_line(e: BaseException) -> str:
  """An exception's message on one line (KeyError's repr quoting unwrapped)."""
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


# ------------------------------------------------------------------------- config files

def resolve_path(path: str) -> str:
  """A config path as given if it exists, else relative to the repository root."""
  if os.path.isfile(path) or os.path.isabs(path):
    return path
  return os.path.join(REPO_ROOT, path)


def load_module(full_path: str) -> Any:
  """The Python file at `full_path` as a fresh module (a config file, a sweep config, an
  experiment's script)."""
  spec = importlib.util.spec_from_file_location(f"cnn_jax_file_{abs(hash(full_path))}",
                                                full_path)
  module = importlib.util.module_from_spec(spec)
  # Registered under its name: dataclasses, and pickle, look a class's module up there.
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


def load_config_file(path: str, arg: str = "") -> ml_collections.ConfigDict:
  """get_config(arg) (or get_config() when arg is "") of a config file, locked."""
  full_path = resolve_path(path)
  if not os.path.isfile(full_path):
    raise UserError(f"config file not found: {path}")
  try:
    module = load_module(full_path)
    config = module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # A broken config is the user's to fix: say why in one line.
    raise UserError(f"cannot load config {path}: {one_line(e)}") from None
  config.lock()
  return config


def field_names(config: ml_collections.ConfigDict, prefix: str = "") -> Iterator[str]:
  """Every dotted field name of a config, parents before their children."""
  for key, value in config.items():
    name = f"{prefix}{key}"
    yield name
    if isinstance(value, ml_collections.ConfigDict):
      yield from field_names(value, f"{name}.")


def suggest_fields(config: ml_collections.ConfigDict, unknown: str) -> list[str]:
  """Fields the user probably meant by `unknown`: the same last part at another depth first
  (`batch_size` -> `data.batch_size`), then close spellings."""
  names = list(field_names(config))
  leaf = unknown.rsplit(".", 1)[-1]
  same_leaf = [n for n in names if n.rsplit(".", 1)[-1] == leaf and n != unknown]
  close = difflib.get_close_matches(unknown, names, n=3, cutoff=0.75)
  return list(dict.fromkeys(same_leaf + close))[:5]


def _config_arg_of(argv: Sequence[str], flag_name: str) -> str | None:
  for i, arg in enumerate(argv):
    if arg == f"--{flag_name}" and i + 1 < len(argv):
      return argv[i + 1]
    if arg.startswith(f"--{flag_name}="):
      return arg.split("=", 1)[1]
  return None


def _overridden_fields(argv: Sequence[str], flag_name: str) -> list[str]:
  prefix = f"--{flag_name}."
  return [arg[len(prefix):].split("=", 1)[0] for arg in argv if arg.startswith(prefix)]


def unknown_field_message(argv: Sequence[str], flag_name: str, error: BaseException) -> str:
  """What to say when an override names a field the config does not have."""
  spec = _config_arg_of(argv, flag_name)
  config = None
  if spec:
    path, _, arg = spec.partition(":")
    try:
      config = load_config_file(path, arg)
    except UserError:
      config = None
  names = set(field_names(config)) if config is not None else set()
  unknown = [f for f in _overridden_fields(argv, flag_name) if f not in names]
  if config is None or not unknown:
    return f"unknown config field in an override: {one_line(error)}"
  field = unknown[0]
  hints = suggest_fields(config, field)
  hint = f"; did you mean {' or '.join(hints)}?" if hints else ""
  return f"unknown config field {field!r} in --{flag_name}.{field}{hint}"


def model_option_value(model: str, field: str, value: Any, default: Any) -> Any:
  """`value` for the model's option `field` as the type of its default (an int for a float,
  a list for a tuple); UserError when it is another type."""
  if isinstance(default, bool) and isinstance(value, str) and value.lower() in ("true", "false"):
    value = value.lower() == "true"
  elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  elif isinstance(default, tuple) and isinstance(value, list):
    value = tuple(value)
  if (isinstance(default, (bool, int, float, str, tuple))
      and not isinstance(value, type(default))
      or isinstance(default, int) and isinstance(value, bool) != isinstance(default, bool)):
    kind = {bool: "true or false", int: "an int", float: "a number", str: "a string",
            tuple: "a tuple"}.get(type(default), type(default).__name__)
    raise UserError(f"model {model!r}: {field} takes {kind} (default {default!r}), "
                    f"got {value!r}")
  return value


def add_model_option(config: ml_collections.ConfigDict, field: str, value: Any) -> None:
  """config.model.<field> = value for an option of the config's model (its constructor's
  keyword: drop_path_rate, stem_width, ...) that config.model does not list: config_flags and
  sweeps override only the fields a config file lists, and a config lists what it changes.
  UserError, with the closest options, when the model takes no such option."""
  # Imported here: the zoo (JAX, Flax) only when an override needs it.
  from cnn_jax.models import registry  # pylint: disable=import-outside-toplevel

  name = config.model.name
  defaults = registry.option_defaults(name)
  if field not in defaults:
    known = [f"model.{k}" for k in (*config.model.keys(), *defaults)]
    close = difflib.get_close_matches(f"model.{field}", known, n=3, cutoff=0.75)
    hint = f"; did you mean {' or '.join(dict.fromkeys(close))}?" if close else ""
    raise UserError(f"unknown config field 'model.{field}': model {name!r} takes no option "
                    f"{field!r}{hint}")
  value = model_option_value(name, field, value, defaults[field])
  with config.model.unlocked():
    config.model[field] = value


def unlisted_model_option(config: ml_collections.ConfigDict, key: str) -> str | None:
  """X, when `key` is `model.X` and X is not a field of the config's model (an option
  `add_model_option` adds), else None: the one rule of the command line and of sweeps."""
  model = config.get("model")
  head, _, field = key.partition(".")
  if (head != "model" or not field or "." in field
      or not isinstance(model, ml_collections.ConfigDict) or "name" not in model
      or field in model):
    return None
  return field


def _take_model_options(argv: Sequence[str], flag_name: str
                        ) -> tuple[list[str], list[tuple[str, str]]]:
  """argv without the `--FLAG.model.X=V` (or `--FLAG.model.X V`) overrides whose X the config
  file's model does not list, and those (X, V): `add_model_option` sets them once the config
  is parsed (and its model name overridden, if it is)."""
  prefix = f"--{flag_name}."
  spec = _config_arg_of(argv, flag_name)
  if not spec or not any(arg.startswith(prefix + "model.") for arg in argv):
    return list(argv), []
  path, _, arg = spec.partition(":")
  try:
    config = load_config_file(path, arg)
  except UserError:
    return list(argv), []  # The parse says what is wrong with the file.
  kept, taken, i = [], [], 0
  while i < len(argv):
    key, has_value, value = argv[i][len(prefix):].partition("=")
    field = unlisted_model_option(config, key) if argv[i].startswith(prefix) else None
    if field is not None:
      if has_value:
        taken.append((field, value))
        i += 1
        continue
      if i + 1 < len(argv):
        taken.append((field, argv[i + 1]))
        i += 2
        continue
    kept.append(argv[i])
    i += 1
  return kept, taken


def _literal(text: str) -> Any:
  """A command-line value as Python: a number, bool, tuple or list, None, else the string."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


# ------------------------------------------------------------------------------- flags

def define_config_flag(name: str = "config", help_text: str | None = None) -> Any:
  """A `--config path.py[:arg]` flag whose fields `--config.a.b=v` override."""
  return config_flags.DEFINE_config_file(
      name, None, help_text or "Path to a config file with get_config(); override fields "
      "with --config.field=value.", lock_config=True)


def config_value(name: str = "config", example: str = "configs/lenet5_mnist.py"
                 ) -> ml_collections.ConfigDict:
  """The parsed config of a `define_config_flag` flag; UserError when it is missing or broken."""
  if not FLAGS[name].present:  # get_config_filename raises on an unparsed flag
    raise UserError(f"--{name} is required, e.g. --{name} {example}")
  config_path = config_flags.get_config_filename(FLAGS[name])
  # "path.py:arg" passes arg to get_config (config_flags splits at the first colon).
  if not os.path.isfile(config_path.split(":", 1)[0]):
    raise UserError(f"config file not found: {config_path.split(':', 1)[0]}")
  try:
    return FLAGS[name].value
  except OSError as e:  # The file exists but failed to load: show why, in one line.
    raise UserError(f"bad --{name}: {one_line(e.__cause__ or e)}") from None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parse, with every error the user can make as one line and exit 2. An override of a
  model option that the config file does not list is added (`add_model_option`)."""
  kept, model_options = _take_model_options(argv, "config")
  command = sys.argv
  if model_options and list(sys.argv) == list(argv):
    # config_flags reads the overrides from sys.argv, not from argv; the command the user
    # typed is back in sys.argv once the flags are parsed (a tool may record it).
    sys.argv = kept
  argv = kept
  try:
    try:
      remaining = FLAGS(argv)
    finally:
      sys.argv = command
    for field, text in model_options:
      add_model_option(FLAGS["config"].value, field, _literal(text))
    return remaining
  except UserError as e:
    fail(str(e))
  except flags.Error as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if "Error whilst parsing config file" in str(e) and lines:
      # config_flags puts the config's whole traceback into the flag's error (get_config raised,
      # e.g. given a `:arg` it does not take); its last line says why.
      spec = _config_arg_of(argv, "config")
      fail(f"bad --config {spec}: {lines[-1]}" if spec else f"bad --config: {lines[-1]}")
    fail(one_line(e))
  except (KeyError, AttributeError) as e:
    # An override naming a field the config does not have: KeyError below the top level,
    # AttributeError at it (`--config.batch_size`).
    message = unknown_field_message(argv, "config", e)
    if isinstance(e, AttributeError) and message.startswith("unknown config field in an"):
      message = f"bad --config: {one_line(e)}"  # Not an override's fault: the file's.
    fail(message)
  except (ValueError, TypeError, OSError, SyntaxError) as e:
    # Raised while loading or overriding the config file.
    fail(f"bad --config: {one_line(e)}")


def no_extra_args(argv: Sequence[str]) -> None:
  """UserError for positional arguments the tool does not take."""
  if len(argv) > 1:
    raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")


def require_flags(*names: str) -> None:
  """UserError naming the first of these flags left without a value."""
  for name in names:
    if FLAGS[name].value in (None, ""):
      raise UserError(f"--{name} is required")


# -------------------------------------------------------------------------------- run

def apply_process_settings() -> None:
  """glibc's malloc settings (re-runs a heavy tool's process once, unless JAX will run on a GPU
  or TPU; with them, one-device CPU programs run inline), XLA:CPU flags, the persistent
  compilation cache and tracing without its quadratic, before JAX starts a backend; the
  opt-outs are CNN_JAX_HUGEPAGES=0, CNN_JAX_XLA_FLAGS=0 and CNN_JAX_COMPILE_CACHE=0."""
  hostenv.reexec_with_malloc_tunables()
  hostenv.configure_jax()


def run(main: Callable[[list[str]], Any], define_flags: Callable[[], None] | None = None, *,
        process_settings: bool = True) -> None:
  """Starts a tool: process settings, its flags, then `main` with user errors as one line."""
  if process_settings:
    apply_process_settings()
  if define_flags is not None:
    define_flags()

  def guarded_main(argv: list[str]) -> None:
    if "verbosity" in FLAGS and not FLAGS["verbosity"].present:
      # Orbax and JAX log at INFO; the tools' own lines are what users want to read.
      logging.set_verbosity(logging.WARNING)
    try:
      main(argv)
    except UserError as e:
      fail(str(e))

  app.run(guarded_main, flags_parser=parse_flags)

"""cnn_jax/cli.py: how every command-line tool starts and fails."""

import importlib

import pytest
from absl import flags

from cnn_jax import cli, config
from cnn_jax.errors import UserError
from helpers import run_cli

TOOLS = ("cnn_jax.main", "cnn_jax.convert", "cnn_jax.erf", "cnn_jax.summary",
         "cnn_jax.data_bench", "cnn_jax.bench", "cnn_jax.sweep", "cnn_jax.launch",
         "cnn_jax.data.prepare")


def test_importing_the_tools_defines_no_flags():
  for name in TOOLS:
    importlib.import_module(name)
  for flag in ("config", "model", "checkpoint", "out", "steps", "workdir"):
    assert flag not in flags.FLAGS, flag


def test_one_line_unwraps_key_errors_and_joins_lines():
  assert cli.one_line(KeyError("'no such field'")) == "no such field"
  assert cli.one_line(ValueError("first\n  second\n")) == "first second"
  assert cli.one_line(ValueError("")) == "ValueError"


def test_suggest_fields_looks_for_the_same_name_at_another_depth_then_close_spellings():
  base = config.get_config()
  assert cli.suggest_fields(base, "batch_size")[0] == "data.batch_size"
  assert "optimizer.learning_rate" in cli.suggest_fields(base, "optimizr.learning_rate")
  assert cli.suggest_fields(base, "zzz") == []


def test_require_flags_names_the_missing_one():
  if "cli_test_flag" not in flags.FLAGS:
    flags.DEFINE_string("cli_test_flag", None, "for test_cli")
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  try:
    with pytest.raises(UserError, match=r"^--cli_test_flag is required$"):
      cli.require_flags("cli_test_flag")
    flags.FLAGS.cli_test_flag = "x"
    cli.require_flags("cli_test_flag")
  finally:
    flags.FLAGS.cli_test_flag = None


@pytest.mark.parametrize("tool", TOOLS[1:])  # main: tests/test_main.py
def test_a_bad_flag_is_one_line_and_exit_2(tool):
  result = run_cli(tool, "--no_such_flag=1")
  assert result.returncode == 2 and result.stdout == ""
  assert result.stderr.strip().splitlines() == [
      "error: Unknown command line flag 'no_such_flag'"], result.stderr

"""The CLI: a short real run, and one clear line + exit code 2 for each kind of bad input."""

import json
import os

import pytest

from helpers import load_config, run_cli, run_cli_in_process

DIGITS = "configs/lenet5_digits.py"


# One device, as `make train` on a CPU: conftest's 8 fake devices cost CPU time, and the
# sharded loop is tests/test_training_at_scale's.
ONE_DEVICE = "--config.mesh.num_devices=1"


def test_cli_trains_and_prints_final_accuracy(tmp_path):
  result = run_cli("cnn_jax.main", "--config", DIGITS, "--workdir", str(tmp_path),
                   "--config.total_steps=30", "--config.optimizer.learning_rate=0.004",
                   "--config.schedule.warmup_epochs=0.2", "--config.ema_decay=0.9", ONE_DEVICE)
  assert result.returncode == 0, result.stderr
  # Top-1, top-5 and loss of the raw and the EMA parameters, as in final_metrics.json.
  final = json.loads((tmp_path / "final_metrics.json").read_text())
  printed = [line for line in result.stdout.splitlines() if line.startswith("final test")]
  assert printed == [
      f"final test accuracy{label}: {final[p + 'accuracy']:.4f}, "
      f"top-5 {final[p + 'top5_accuracy']:.4f} (loss {final[p + 'loss']:.4f})"
      for p, label in (("", ""), ("ema_", " (EMA)"))]
  assert final["top5_accuracy"] >= final["accuracy"]
  assert "eta" in result.stdout  # the progress line
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["optimizer"]["learning_rate"] == 0.004
  # A rerun of a finished workdir resumes at the end and trains nothing more.
  again = run_cli("cnn_jax.main", "--config", DIGITS, "--workdir", str(tmp_path),
                  "--config.total_steps=30", "--config.optimizer.learning_rate=0.004",
                  "--config.schedule.warmup_epochs=0.2", "--config.ema_decay=0.9", ONE_DEVICE)
  assert again.returncode == 0, again.stderr
  assert "resumed" in again.stdout
  assert not any(line.startswith("[") for line in again.stdout.splitlines())
  accuracy = [line for line in result.stdout.splitlines() if line.startswith("final test")]
  assert accuracy == [line for line in again.stdout.splitlines() if line.startswith("final test")]
  # A rerun whose state the checkpoint does not fit (another optimizer) is one line, and the
  # finished run's config.json, which predict reads beside the checkpoints, stays as it was.
  saved_config = (tmp_path / "config.json").read_text()
  refused = run_cli_in_process("cnn_jax.main", "--config", DIGITS, "--workdir", str(tmp_path),
                               "--config.total_steps=40", "--config.optimizer.name=sgd",
                               "--config.schedule.warmup_epochs=0.2", "--config.ema_decay=0.9",
                               ONE_DEVICE)
  assert refused.returncode == 2
  lines = refused.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: the checkpoint at step 30 "), lines
  assert "does not fit this run's state (opt_state/" in lines[0]
  assert (tmp_path / "config.json").read_text() == saved_config
  # A resume with other overrides says what changed and keeps the config it replaces; a stop
  # for this invocation (halt_after_steps, not reached here) changes nothing the run trains.
  longer = run_cli_in_process("cnn_jax.main", "--config", DIGITS, "--workdir", str(tmp_path),
                              "--config.total_steps=32", "--config.optimizer.learning_rate=0.004",
                              "--config.schedule.warmup_epochs=0.2", "--config.ema_decay=0.9",
                              "--config.halt_after_steps=5", ONE_DEVICE)
  assert longer.returncode == 0, longer.stderr
  kept = tmp_path / "config.before_step_30.json"
  assert (f"resumed with a changed config (total_steps: 30 -> 32); the one it replaces is kept "
          f"in {kept}") in longer.stdout
  assert kept.read_text() == saved_config
  assert json.loads((tmp_path / "config.json").read_text())["total_steps"] == 32


@pytest.mark.parametrize("args, message", [
    (["--config.model.name=resnet5000"], "unknown model 'resnet5000'"),
    (["--config.optimizr.learning_rate=0.1"],
     "unknown config field 'optimizr.learning_rate' in --config.optimizr.learning_rate; "
     "did you mean optimizer.learning_rate?"),
    (["--config.batch_size=13"],
     "unknown config field 'batch_size' in --config.batch_size; did you mean data.batch_size?"),
    (["--config.data.batch_size=60"], "data.batch_size=60 is not divisible by the 8 devices"),
    (["--config.model.image_size=20"], "LeNet-5 needs image_size 28 or 32"),
    (["--config.data.image_size=16", "--config.model.image_size=32"],
     "the model cannot take images of shape (16, 16, 1)"),
    (["--config.data.batch_size=0"], "data.batch_size=0 must be at least 1"),
    (["--config.data.eval_batch_size=0"], "data.eval_batch_size=0 must be at least 1"),
    (["--config.optimizer.grad_accum_steps=0"], "optimizer.grad_accum_steps=0 must be at least 1"),
    (["--config.log_every_steps=0"], "log_every_steps=0 must be at least 1"),
    (["--config.num_epochs=-1"], "num_epochs=-1 must be at least 0"),
    (["--config.checkpoint.keep=0"], "checkpoint.keep=0 must be at least 1"),
    (["--config.label_smoothing=1.5"], "label_smoothing=1.5 must be in [0, 1)"),
    (["--config.halt_after_steps=-1"], "halt_after_steps=-1 must be at least 0"),
    (["--config.data.num_workers=-1"], "data.num_workers=-1 must be at least 0"),
    (["--config.optimizer.weight_decay=-0.1"], "optimizer.weight_decay=-0.1 must be at least 0"),
    (["--config.optimizer.layer_decay=2"], "optimizer.layer_decay=2.0 must be in (0, 1]"),
])
def test_bad_input_gives_one_line_and_exit_2(tmp_path, args, message):
  # In this process: each case is the tool's own flag parsing and main, without a process
  # start; the tests below run the real process.
  workdir = tmp_path / "run"
  result = run_cli_in_process("cnn_jax.main", "--config", DIGITS, "--workdir", str(workdir),
                              *args)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  assert message in lines[0]
  assert "Traceback" not in result.stderr
  # Refused before the run took its workdir, or inside it before writing anything there.
  assert not workdir.exists() or os.listdir(workdir) == []


def test_a_config_argument_the_config_does_not_take_is_one_line(tmp_path):
  result = run_cli_in_process("cnn_jax.main", "--config", f"{DIGITS}:tanh", "--workdir",
                              str(tmp_path / "run"))
  assert result.returncode == 2
  assert result.stderr.strip() == (f"error: bad --config {DIGITS}:tanh: TypeError: get_config() "
                                   "takes 0 positional arguments but 1 was given")


def test_a_batch_the_processes_cannot_split_stops_before_the_workdir_is_made(tmp_path,
                                                                              monkeypatch):
  # The data pipeline's rule, applied before the run takes its workdir (it was met only when
  # the data were built, after the workdir and its lock existed).
  import jax

  from cnn_jax import train
  from cnn_jax.errors import UserError

  monkeypatch.setattr(jax, "process_count", lambda: 3)
  workdir = tmp_path / "run"
  with pytest.raises(UserError, match=r"^data.batch_size=64 is not divisible by the 3 processes$"):
    train.train_and_evaluate(load_config("lenet5_digits"), str(workdir))
  assert not workdir.exists()


def test_missing_config_file(tmp_path):
  result = run_cli("cnn_jax.main", "--config", "configs/no_such.py", "--workdir", str(tmp_path))
  assert result.returncode == 2
  assert result.stderr.strip() == "error: config file not found: configs/no_such.py"


def test_workdir_that_cannot_be_written(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  result = run_cli("cnn_jax.main", "--config", DIGITS, "--workdir", str(blocker / "run"))
  assert result.returncode == 2
  assert result.stderr.strip().startswith(f"error: cannot write to workdir '{blocker}/run'")
  assert not os.path.exists(blocker / "run")


@pytest.mark.parametrize("config, args", [
    ("configs/convnextv2_imagenet_finetune.py:atto", []),
    ("configs/convnextv2_digits_finetune.py", ["--config.init_from="]),
])
def test_fine_tuning_without_init_from_stops_before_it_starts(tmp_path, config, args):
  workdir = tmp_path / "run"
  result = run_cli_in_process("cnn_jax.main", "--config", config, "--workdir", str(workdir),
                              *args)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  assert "--config.init_from=DIR" in lines[0]
  assert "--config.init_from_required=False" in lines[0]  # the from-scratch opt-out
  assert not workdir.exists()  # nothing ran, not even the workdir's config.json


def test_fine_tuning_from_scratch_on_purpose_passes_the_check(tmp_path):
  # With the opt-out the run goes on to the workdir; a file in its way fails that next check,
  # so the test trains nothing.
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  result = run_cli_in_process("cnn_jax.main", "--config", "configs/convnextv2_digits_finetune.py",
                              "--workdir", str(blocker / "run"), "--config.init_from=",
                              "--config.init_from_required=False")
  assert result.returncode == 2
  assert result.stderr.strip().startswith("error: cannot write to workdir"), result.stderr

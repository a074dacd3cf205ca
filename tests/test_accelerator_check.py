"""experiments/accelerator/run.py: its CPU dry run goes through the same bench and main commands
as on an accelerator and writes the JSON and the Markdown table."""

import json
import os
import subprocess
import sys

from cnn_jax import cli
from helpers import HANG_TIMEOUT, REPO_ROOT

SCRIPT = "experiments/accelerator/run.py"
# The dry run on one CPU device, as a CPU host runs it: conftest's 8 fake devices would cost
# its bench and main runs more CPU time, and nothing here is about sharding.
ONE_DEVICE_ENV = {**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "").replace(
    "--xla_force_host_platform_device_count=8", "--xla_force_host_platform_device_count=1")}


def test_dry_run_writes_the_table_and_the_json(tmp_path):
  out = tmp_path / "acc"
  # The script's own per-row timeout (240 s) is for a hung accelerator; a loaded 2-core
  # machine's start-up and compile must not trip it.
  result = subprocess.run([sys.executable, SCRIPT, "--dry_run", "--models", "resnet20",
                           "--timeout", str(HANG_TIMEOUT), "--out", str(out)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=2 * HANG_TIMEOUT + 60,
                          env=ONE_DEVICE_ENV)
  assert result.returncode == 0, result.stdout + result.stderr
  results = json.loads((out / "results.json").read_text())
  assert results["dry_run"] is True and results["complete"] is True
  bench, main_run = results["rows"]
  assert bench["ok"] and main_run["ok"], results["rows"]
  assert (bench["model"], bench["mode"], bench["batch_size"], bench["image_size"]) == (
      "resnet20", "train", 8, 32)
  assert bench["images_per_sec"] > 0 and bench["compile_time_s"] > 0
  assert bench["model_flops_per_step"] > 0 and bench["mfu"] > 0
  # The main run trained its 3 steps through the synthetic input pipeline.
  assert main_run["steps"] == 3 and main_run["images_per_sec"] > 0
  assert (out / "main_run" / "final_metrics.json").exists()
  table = (out / "results.md").read_text()
  assert table == result.stdout[result.stdout.index("Accelerator check"):]
  rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
  assert [r.split("|")[1].strip() for r in rows[1:]] == [
      bench["label"], f"{main_run['label']} (3 steps)"]


def test_a_filter_that_matches_no_row_is_refused(tmp_path):
  result = subprocess.run([sys.executable, SCRIPT, "--dry_run", "--models", "nosuchmodel",
                           "--out", str(tmp_path)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=HANG_TIMEOUT)
  assert result.returncode == 2 and "no row has these models" in result.stderr


def test_without_an_accelerator_it_stops_before_any_row(tmp_path):
  # JAX_PLATFORMS=cpu (conftest): what a GPU host sees before JAX's CUDA plugin is installed.
  # Without the check every row timed out on the CPU, one after another.
  out = tmp_path / "acc"
  result = subprocess.run([sys.executable, SCRIPT, "--out", str(out)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=HANG_TIMEOUT)
  assert result.returncode == 2
  assert ("error: JAX's backend here is cpu, not a GPU or TPU" in result.stderr
          and "make venv-cuda" in result.stderr), result.stderr
  assert not out.exists()


def test_a_failed_row_is_reported_in_the_table():
  run = cli.load_module(f"{REPO_ROOT}/{SCRIPT}")
  results = {"dry_run": False, "host": {"device": "NVIDIA H200", "num_devices": 1,
                                        "jax_version": "0", "date": "today"},
             "rows": [{"label": "ConvNeXt-T train", "kind": "bench", "ok": False,
                       "error": "RESOURCE_EXHAUSTED: out of memory"}]}
  table = run.markdown(results)
  assert "| ConvNeXt-T train | | | | failed: RESOURCE_EXHAUSTED: out of memory |" in table
  assert "DRY RUN" not in table


def test_each_row_is_on_disk_before_the_next_runs(tmp_path):
  run = cli.load_module(f"{REPO_ROOT}/{SCRIPT}")
  results = {"dry_run": False, "complete": False, "rows": [],
             "host": {"device": "?", "num_devices": "?", "jax_version": "?", "date": "today"}}
  run.record_row(results, {"label": "ResNet-50 train", "kind": "bench", "ok": False,
                           "error": "timed out after 240 s"}, str(tmp_path))
  run.record_row(results, {
      "label": "ConvNeXt-T train", "kind": "bench", "ok": True, "batch_size": 256,
      "image_size": 224, "dtype": "bfloat16", "images_per_sec": 4151.0,
      "step_time_median_s": 0.0617, "mfu": 0.112, "compile_time_s": 36.0,
      "peak_device_bytes": 2**34, "device_kind": "NVIDIA H200", "platform": "gpu",
      "num_devices": 1, "jax_version": "0.11.2"}, str(tmp_path))
  on_disk = json.loads((tmp_path / "results.json").read_text())
  assert on_disk["complete"] is False
  assert [row["label"] for row in on_disk["rows"]] == ["ResNet-50 train", "ConvNeXt-T train"]
  # The device is known from the first row that ran, before the run ends.
  assert on_disk["host"]["device"] == "NVIDIA H200"
  table = (tmp_path / "results.md").read_text()
  assert "| ResNet-50 train | | | | failed: timed out after 240 s |" in table
  assert ("| ConvNeXt-T train | 256 | 224 | bfloat16 | 4151 | 61.7 ms | 11.2 % | 36 s "
          "| 16.0 GiB |") in table


def test_a_vs_torch_report_gives_the_ratio_column():
  # bench --vs_torch's report as the H200 run wrote it (stop 35): its figures are the input
  # here; what is checked is which of them the row and the table take.
  run = cli.load_module(f"{REPO_ROOT}/{SCRIPT}")
  with open(os.path.join(REPO_ROOT, "experiments/accelerator/results/h200_stop35",
                         "vs_resnet50.json")) as f:
    report = json.load(f)
  figures = run.bench_figures(report, "train")
  train, infer = report["jax"]
  assert figures["images_per_sec"] == train["images_per_sec"] and figures["mode"] == "train"
  assert figures["torch"]["train_ratio"] == report["ratio_vs_torch"]["train"]
  assert figures["torch"]["infer_images_per_sec"] == report["torch"]["infer"]["images_per_sec"]
  assert figures["torch"]["infer_jax_images_per_sec"] == infer["images_per_sec"]
  # Without a pairing (a bench run without --vs_torch) there is no PyTorch entry.
  assert "torch" not in run.bench_figures({**report, "torch": None}, "train")
  results = {"dry_run": False, "host": {"device": "NVIDIA H200", "num_devices": 1,
                                        "jax_version": "0", "date": "today"},
             "rows": [{"label": "ResNet-50 train", "kind": "bench", "ok": True, **figures}]}
  table = run.markdown(results)
  ratios = (f"{report['ratio_vs_torch']['train']:.2f}x / "
            f"{report['ratio_vs_torch']['infer']:.2f}x")
  row = next(line for line in table.splitlines() if line.startswith("| ResNet-50 train"))
  assert row.endswith(f"| {ratios} |") and row.count("|") == 11
  assert "vs PyTorch: PyTorch's step time over cnn_jax's" in table


def test_vs_torch_without_torch_stops_before_any_row(tmp_path):
  result = subprocess.run([sys.executable, SCRIPT, "--dry_run", "--vs_torch", "--torch_python",
                           "/bin/false", "--out", str(tmp_path / "acc")], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=HANG_TIMEOUT)
  assert result.returncode == 2 and "--vs_torch needs torch and timm" in result.stderr
  assert not (tmp_path / "acc").exists()


def test_the_cudnn_attention_row_reaches_the_model_through_bench():
  """The row's model options go to bench's --model_options; on this CPU the model refuses
  them in one line (on a GPU the same command runs cuDNN's attention)."""
  run = cli.load_module(f"{REPO_ROOT}/{SCRIPT}")
  [row] = [r for r in run.FULL_ROWS if "cuDNN" in r.label]
  cmd = run.bench_command(row, dtype="bfloat16", steps=2, warmup=1)
  assert cmd[cmd.index("--model_options") + 1] == '{"attention_impl": "cudnn"}'
  result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=HANG_TIMEOUT)
  assert result.returncode == 2, result.stderr
  assert result.stderr.strip() == ("error: model 'vit_small_patch16_224': attention_impl='cudnn' "
                                   "runs on an NVIDIA GPU; JAX's backend here is cpu")

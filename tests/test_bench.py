"""cnn_jax.bench: the CLI runs on a tiny model and its JSON has every field; user errors are one
line with exit code 2. Nothing here asserts a timing."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from cnn_jax import bench, bench_torch, perf
from helpers import load_config, run_cli, run_cli_in_process

JAX_FIELDS = {
    "framework", "model", "mode", "batch_size", "image_size", "in_channels", "num_classes",
    "dtype", "with_data", "steps", "warmup", "images_per_sec", "step_time_s", "step_times_s",
    "warmup_times_s", "lower_time_s", "compile_time_s", "model_flops_per_step",
    "forward_flops_per_step", "xla_flops_per_step", "peak_flops", "peak_flops_source", "mfu",
    "platform", "device_kind", "num_devices", "host_peak_rss_bytes", "jax_version",
    "backend_env", "peak_device_bytes", "peak_device_source", "xla_estimate_bytes"}
STAT_FIELDS = {"median", "mean", "min", "max", "p10", "p90", "stdev", "spread_pct"}
HAS_TORCH = all(importlib.util.find_spec(m) for m in ("torch", "timm"))


def _check_jax_result(r: dict, mode: str, steps: int) -> None:
  assert JAX_FIELDS <= set(r), JAX_FIELDS - set(r)
  assert set(r["step_time_s"]) == STAT_FIELDS
  assert r["mode"] == mode and r["framework"] == "jax"
  assert len(r["step_times_s"]) == steps
  assert r["images_per_sec"] > 0 and r["compile_time_s"] > 0
  assert r["step_time_s"]["min"] <= r["step_time_s"]["median"] <= r["step_time_s"]["max"]
  # LeNet-5 on 32x32: 0.416 MMACs per image (conv + dense), so 0.832 MFLOPs forward.
  forward = r["forward_flops_per_step"]
  assert forward == pytest.approx(r["batch_size"] * 2 * 416_520, rel=0.05)
  assert r["model_flops_per_step"] == (3 * forward if mode == "train" else forward)
  assert r["peak_flops"] > 0 and 0 < r["mfu"]
  assert r["peak_device_bytes"] is None or r["peak_device_bytes"] > 0


def test_cli_json_train_has_every_field():
  result = run_cli("cnn_jax.bench", "--model=lenet5", "--batch_size=8", "--steps=2",
                   "--warmup=1", "--json")
  assert result.returncode == 0, result.stderr
  report = json.loads(result.stdout)
  assert set(report) == {"jax", "torch", "ratio_vs_torch", "ratio_vs_torch_per_pair", "host"}
  assert report["torch"] is None and report["ratio_vs_torch"] is None
  [r] = report["jax"]
  _check_jax_result(r, "train", 2)
  assert r["num_devices"] == 8 and r["image_size"] == 32 and r["num_classes"] == 10
  assert r["conv_impl"] == "auto"
  assert "images/s" in bench.format_report(report)


def test_a_config_override_sets_a_model_option_its_file_does_not_list():
  # configs/lenet5_digits.py lists no pooling; LeNet5 takes one. A misspelt option is still
  # refused, with the option meant, and a value of another type than the option's default.
  result = run_cli_in_process("cnn_jax.bench", "--config=configs/lenet5_digits.py",
                              "--config.model.pool=avg", "--config.mesh.num_devices=1",
                              "--steps=1", "--warmup=0", "--json")
  assert result.returncode == 0, result.stderr
  [r] = json.loads(result.stdout)["jax"]
  assert r["model_options"]["pool"] == "avg"
  typo = run_cli_in_process("cnn_jax.bench", "--config=configs/lenet5_digits.py",
                            "--config.model.pol=avg", "--steps=1", "--json")
  assert (typo.returncode, typo.stderr) == (2, (
      "error: unknown config field 'model.pol': model 'lenet5' takes no option 'pol'; "
      "did you mean model.pool?\n"))
  wrong_type = run_cli_in_process("cnn_jax.bench", "--config=configs/lenet5_digits.py",
                                  "--config.model.name=resnet20", "--config.model.stem_width=8.5",
                                  "--steps=1", "--json")
  assert (wrong_type.returncode, wrong_type.stderr) == (2, (
      "error: model 'resnet20': stem_width takes an int (default 64), got 8.5\n"))


def test_config_times_the_runs_step_and_its_feed():
  # The config's model, batch and channels replace the flags' (--model is not needed).
  # In this process, as the other CLI cases below: test_cli_json_train_has_every_field is the
  # check of a real process.
  result = run_cli_in_process("cnn_jax.bench", "--config=configs/lenet5_digits.py",
                              "--config.data.batch_size=16", "--config.mesh.num_devices=1",
                              "--with_data", "--steps=2", "--warmup=1", "--feed_rounds=3",
                              "--json")
  assert result.returncode == 0, result.stderr
  [r] = json.loads(result.stdout)["jax"]
  _check_jax_result(r, "train", 2)
  assert (r["model"], r["batch_size"], r["in_channels"], r["num_devices"]) == \
      ("lenet5", 16, 1, 1)
  feed = r["feed"]
  assert feed["rounds"] == 3 and feed["steps_per_round"] == 2
  assert all(len(feed["seconds_per_round"][k]) == 3 and feed[f"{k}_s"] > 0
             and feed[f"{k}_cpu_s"] >= 0
             for k in ("step_alone", "step_with_data", "pipeline_alone"))
  assert feed["with_data_vs_alone"] == pytest.approx(
      feed["step_with_data_s"] / feed["step_alone_s"])
  rounds = feed["seconds_per_round"]
  assert feed["with_data_vs_alone_round_median"] == pytest.approx(sorted(
      fed / alone for fed, alone in zip(rounds["step_with_data"], rounds["step_alone"]))[1])
  assert "input pipeline" in bench.format_report(
      {"jax": [r], "torch": None, "host": {"cpus": 2, "load_avg_1m_start": 0.0,
                                           "load_avg_1m_end": 0.0}})


def test_feed_rounds_alternate_their_order_so_drift_falls_on_every_kind():
  calls = []
  feed = bench.FeedCheck(step_alone=lambda: calls.append("alone"),
                         step_with_data=lambda: calls.append("fed"),
                         pipeline_alone=lambda: calls.append("pipeline"),
                         step_fed_by=lambda put: lambda: None)
  result = feed.measure(steps=1, rounds=3)
  assert calls == ["alone", "fed", "pipeline", "pipeline", "fed", "alone",
                   "alone", "fed", "pipeline"]
  assert result["rounds"] == 3 and len(result["seconds_per_round"]["step_alone"]) == 3


def test_config_without_model_image_size_in_process():
  # A config file's ConfigDict is locked, and most models take no image_size (ResNets).
  config = load_config("lenet5_digits", **{"data.batch_size": 8, "mesh.num_devices": 1})
  del config.model["image_size"]
  config.lock()
  r = bench.benchmark_jax("ignored", config=config, steps=1, warmup=0)
  assert (r["model"], r["batch_size"], r["image_size"], r["in_channels"]) == ("lenet5", 8, 32, 1)


def test_infer_with_data_in_process():
  r = bench.benchmark_jax("lenet5", mode="infer", batch_size=8, steps=2, warmup=1,
                          with_data=True, num_devices=1)
  _check_jax_result(r, "infer", 2)
  assert r["with_data"] and r["num_devices"] == 1


def test_cli_table_bfloat16():
  result = run_cli_in_process("cnn_jax.bench", "--model=lenet5", "--batch_size=8", "--steps=1",
                              "--warmup=0", "--mode=infer", "--dtype=bfloat16",
                              "--num_devices=1")
  assert result.returncode == 0, result.stderr
  for words in ("images/s", "step time", "compile time", "peak memory", "MFU", "bfloat16"):
    assert words in result.stdout


def test_cli_model_options_reach_the_model():
  result = run_cli_in_process("cnn_jax.bench", "--model=lenet5", "--batch_size=8", "--steps=1",
                              "--warmup=0", "--mode=infer", "--num_devices=1", "--json",
                              '--model_options={"in_channels": 1}')
  assert result.returncode == 0, result.stderr
  (r,) = json.loads(result.stdout)["jax"]
  assert r["in_channels"] == 1 and r["model_options"] == {"in_channels": 1}


@pytest.mark.parametrize("args, message", [
    (("--model=resnet_5o",), "unknown model"),
    (("--model=lenet5", "--mode=sideways"), "mode"),
    (("--model=lenet5", "--batch_size=7"), "not divisible"),
    (("--model=lenet5", "--steps=0"), "steps"),
    (("--model=lenet5", "--vs_torch", "--torch_python=/nonexistent/python"), "cannot be run"),
    (("--model=lenet5", "--vs_torch", "--mode=fcmae"), "--vs_torch"),
    (("--model=lenet5", "--conv_impl=fast"), "conv_impl"),
    (("--model=lenet5", "--model_options={patch_size: 1}"), "--model_options is not valid JSON"),
    (("--model=lenet5", "--torch_options=[1]"), "--torch_options must be a JSON object"),
    ((), "--model is required"),
])
def test_user_errors_are_one_line(args, message):
  extra = () if "--steps=0" in args else ("--steps=1",)
  result = run_cli_in_process("cnn_jax.bench", *args, *extra)
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


@pytest.mark.skipif(HAS_TORCH, reason="this Python has torch: no install hint to show")
def test_vs_torch_without_torch_says_how_to_install():
  result = run_cli_in_process("cnn_jax.bench", "--model=lenet5", "--vs_torch",
                              f"--torch_python={sys.executable}")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f"error: --vs_torch needs PyTorch and timm in {sys.executable} (an optional extra: "
      f"{bench_torch.TORCH_INSTALL}, or pass --torch_python=A_PYTHON_WITH_TORCH)"]


@pytest.mark.skipif(not HAS_TORCH, reason="torch and timm are an optional extra")
def test_vs_torch_ratios():
  report = bench.run("resnet18", vs_torch=True, batch_size=8, image_size=32, steps=1, warmup=0,
                     num_devices=1)
  assert set(report["ratio_vs_torch"]) == {"train", "infer"}
  assert all(v > 0 for v in report["ratio_vs_torch"].values())
  assert set(report["torch"]["train"]["step_time_s"]) == STAT_FIELDS


def test_paired_times_alternate_the_frameworks(monkeypatch):
  monkeypatch.setattr(bench_torch, "_SETTLE_S", 0.0)
  calls = []

  class FakeWorker:
    def run_steps(self, mode, count):
      calls.extend(["torch"] * count)
      return [0.5] * count

  def time_jax(count):
    calls.extend(["jax"] * count)
    return [0.1] * count

  jax_warm, jax_times, torch_warm, torch_times = bench_torch.paired_times(
      time_jax, FakeWorker(), "train", steps=3, warmup=1)
  # Warm-up, then turns of one untimed step and up to two timed ones.
  assert calls == ["jax", "torch"] + ["jax"] * 3 + ["torch"] * 3 + ["jax"] * 2 + ["torch"] * 2
  assert len(jax_warm) == len(torch_warm) == 1 and len(jax_times) == len(torch_times) == 3


def test_each_turn_times_only_steps_past_the_slow_start_after_the_other_frameworks_turn(
    monkeypatch):
  """A step after the other framework's turn runs slower for a few steps (a fast step more
  steps); each turn leaves out `_TURN_WARM_S` worth of steps at its framework's own pace."""
  monkeypatch.setattr(bench_torch, "_SETTLE_S", 0.0)
  turns = {"jax": [], "torch": []}

  def turn(name, steady, count):
    turns[name].append(count)
    return [3 * steady] * min(3, count) + [steady] * max(0, count - 3)  # 3 slow steps first

  class FakeWorker:
    def run_steps(self, mode, count):
      return turn("torch", 0.5, count)

  jax_warm, jax_times, torch_warm, torch_times = bench_torch.paired_times(
      lambda count: turn("jax", 0.01, count), FakeWorker(), "train", steps=4, warmup=1)
  assert jax_times == [0.01] * 4  # 0.1 s of steps at 0.03 s (the median seen): 4 untimed.
  assert turns["jax"] == [1, 4 + 2, 4 + 2]
  assert torch_times == [1.5] * 4  # A 1.5 s step fills 0.1 s alone: one untimed, as before.
  assert turns["torch"] == [1, 1 + 2, 1 + 2]


def test_peak_table_and_stats():
  assert perf.table_peak_flops("NVIDIA H100 PCIe", "bfloat16") == 756e12
  assert perf.table_peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
  assert perf.table_peak_flops("TPU v4", "float32") == 275e12
  assert perf.table_peak_flops("cpu", "float32") is None
  stats = bench.step_time_stats([3.0, 1.0, 2.0, 4.0, 5.0])
  assert stats["median"] == 3.0 and stats["min"] == 1.0 and stats["max"] == 5.0
  assert stats["p10"] == pytest.approx(1.4) and stats["p90"] == pytest.approx(4.6)


def test_fcmae_mode_on_a_tiny_encoder():
  # XLA's own convs: the CPU forms of the 7x7 depthwise convs take most of this step's compile,
  # and the mode's wiring, not the conv forms, is what this checks.
  [r] = bench.run("convnextv2_atto", mode="fcmae", batch_size=8, image_size=64, steps=1,
                  warmup=0, num_devices=1, conv_impl="xla",
                  model_kwargs={"depths": (1, 1, 1, 1), "dims": (8, 16, 32, 64)})["jax"]
  assert r["mode"] == "fcmae" and r["images_per_sec"] > 0
  assert r["model_flops_per_step"] == 3 * r["forward_flops_per_step"] > 0


def test_vs_torch_report_with_a_stand_in_worker(monkeypatch):
  """run()'s pairing and ratios, with the PyTorch process replaced by a fixed-time stand-in."""
  monkeypatch.setattr(bench_torch, "_SETTLE_S", 0.0)
  monkeypatch.setattr(bench_torch, "check_torch", lambda python: "python")

  built = []

  class StandIn:
    def __init__(self, python, model_name, options=None, **sizes):
      built.append((model_name, options))
      self.meta = {"framework": "torch", "source": "stand-in", "torch_version": "0",
                   "threads": 1, **sizes}

    def run_steps(self, mode, count):
      return [0.25] * count

    def close(self):
      pass

  monkeypatch.setattr(bench_torch, "TorchWorker", StandIn)
  report = bench.run("lenet5", vs_torch=True, batch_size=8, steps=2, warmup=1, num_devices=1,
                     torch_model="lenet5_twin", torch_options={"width": 2})
  assert built == [("lenet5_twin", {"width": 2})]
  assert [r["mode"] for r in report["jax"]] == ["train", "infer"]
  for r in report["jax"]:
    mode = r["mode"]
    assert report["ratio_vs_torch"][mode] == pytest.approx(0.25 / r["step_time_s"]["median"])
    assert set(report["ratio_vs_torch_per_pair"][mode]) == STAT_FIELDS
    assert report["torch"][mode]["images_per_sec"] == pytest.approx(8 / 0.25)
  assert "ratio train" in bench.format_report(report)

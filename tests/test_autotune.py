"""The conv autotune (cnn_jax/models/autotune.py): under conv_impl "auto" on CPU each conv or max
pool with a CPU form takes the form measured faster for this CPU model and shape, measured once
and then read from the cache; "xla" and "rewrite" force a form without measuring; either
choice computes the same values and gradients."""

import functools
import json
import shutil
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import hostenv
from cnn_jax.models import autotune, layers, onednn
from helpers import normal

ZEN3 = ("vendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\n"
        "flags\t\t: fpu sse4_2 avx f16c fma avx2 bmi2\n")
ZEN4 = ZEN3.replace("model\t\t: 1", "model\t\t: 17").replace(
    "avx2", "avx2 avx512f avx512bw avx512_bf16")


@pytest.fixture
def tuning(tmp_path, monkeypatch):
  """Autotune on, a fresh cache file and memory, and a fake `measure` whose timings the test
  sets (`calls` counts the measurements)."""
  monkeypatch.setenv(autotune.MODE_ENV, "1")
  monkeypatch.setenv(hostenv.CACHE_ENV, str(tmp_path))
  monkeypatch.setattr(autotune, "_memo", {})

  class Fake:
    def __init__(self):
      self.calls = 0
      self.seconds = {"rewrite": 2.0, "xla": 1.0}

    def __call__(self, candidates, avals):
      """`seconds`: {form: s} for forward and gradient alike, or {form: {part: s}}; a form
      without one is the slowest."""
      self.calls += 1
      self.candidates = set(candidates)
      assert {"rewrite", "xla"} <= self.candidates <= set(autotune.CHOICES)
      seconds = {name: self.seconds.get(name, 9.0) for name in candidates}
      return {name: s if isinstance(s, dict) else dict.fromkeys(autotune.PARTS, s)
              for name, s in seconds.items()}

  fake = Fake()
  monkeypatch.setattr(autotune, "measure", fake)
  return fake


def _depthwise(x, w):
  return layers.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=x.shape[-1])


def _operands():
  return normal(0, (2, 9, 9, 6)), normal(1, (3, 3, 1, 6))


def _traced(impl="auto", scale=1.0):
  """The jaxpr of a freshly traced jit of the depthwise conv (a new function: no trace cache)."""
  def f(x, w):
    with layers.conv_impl(impl):
      return _depthwise(x, w) * scale
  return str(jax.make_jaxpr(jax.jit(f))(*_operands()))


def test_the_choice_is_measured_once_then_read_from_the_cache(tuning):
  assert "conv_general_dilated" in _traced()  # XLA's conv measured faster: taken.
  assert tuning.calls == 1
  assert "conv_general_dilated" in _traced(scale=2.0)  # A new trace, same shape: from memory.
  assert tuning.calls == 1
  autotune._memo.clear()  # As a new process: from the file.
  assert "conv_general_dilated" in _traced(scale=3.0)
  assert tuning.calls == 1
  (records,) = json.loads(open(autotune.cache_path()).read()).values()
  (record,) = records.values()
  assert record["forward"] == record["gradient"] == "xla"
  assert record["xla_gradient_s"] < record["rewrite_gradient_s"]


def test_a_choice_made_by_another_measuring_rule_is_measured_again(tuning, monkeypatch):
  assert "conv_general_dilated" in _traced()
  monkeypatch.setattr(autotune, "_forms_version",
                      functools.cache(autotune._forms_version.__wrapped__))  # Restored after.
  monkeypatch.setattr(autotune, "NEAR_MARGIN", autotune.NEAR_MARGIN * 1.1)
  autotune._memo.clear()
  assert "conv_general_dilated" in _traced(scale=2.0)
  assert tuning.calls == 2
  assert len(json.loads(open(autotune.cache_path()).read()).popitem()[1]) == 2


def test_each_shape_is_measured_and_the_faster_form_taken(tuning):
  tuning.seconds = {"rewrite": 1.0, "xla": 2.0}
  assert "conv_general_dilated" not in _traced()  # The CPU form (shifted multiply-adds).
  x, w = _operands()
  with layers.conv_impl("auto"):
    jax.make_jaxpr(_depthwise)(x[:, :5], w)  # Another shape: measured too.
  assert tuning.calls == 2


def test_the_choice_is_per_cpu_model(tuning, monkeypatch):
  assert autotune.cpu_key(ZEN3) != autotune.cpu_key(ZEN4)  # Both are "AMD EPYC".
  assert "avx512f" in autotune.cpu_key(ZEN4) and "avx512f" not in autotune.cpu_key(ZEN3)
  key_of = autotune.cpu_key
  monkeypatch.setattr(autotune, "cpu_key", lambda: key_of(ZEN3))
  _traced()
  monkeypatch.setattr(autotune, "cpu_key", lambda: key_of(ZEN4))
  _traced(scale=2.0)
  assert tuning.calls == 2  # Another CPU model: measured again, not read.
  assert set(json.loads(open(autotune.cache_path()).read())) == {key_of(ZEN3), key_of(ZEN4)}


def _traced_dense(scale=1.0):
  """The jaxpr of a freshly traced jit of a 3x3 conv, a form oneDNN takes."""
  x, w = normal(0, (2, 9, 9, 16)), normal(1, (3, 3, 16, 16))

  def f(x, w):
    with layers.conv_impl("auto"):
      return layers.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC")) * scale
  return str(jax.make_jaxpr(jax.jit(f))(x, w))


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler to build oneDNN's")
def test_onednn_is_timed_in_a_one_device_process_and_records_follow_where_it_can_run(
    tuning, monkeypatch):
  tuning.seconds = {"rewrite": 2.0, "xla": 3.0, "onednn": 1.0}
  assert not onednn.may_autotune()  # This process has 8 devices: not offered.
  assert onednn.TARGET not in _traced_dense()
  assert tuning.candidates == {"rewrite", "xla"}
  # One device (a training process on a CPU host): the record of two forms is timed again, with
  # oneDNN, which is taken.
  monkeypatch.setattr(onednn, "may_autotune", lambda: True)
  autotune._memo.clear()
  assert onednn.TARGET in _traced_dense(scale=2.0)
  assert tuning.calls == 2 and tuning.candidates == {"rewrite", "xla", "onednn"}
  (records,) = json.loads(open(autotune.cache_path()).read()).values()
  (record,) = records.values()
  assert record["forward"] == record["gradient"] == "onednn"
  assert record["onednn_gradient_s"] == 1.0
  # Where it cannot run again, the record that chose it is timed again without it.
  monkeypatch.setattr(onednn, "may_autotune", lambda: False)
  autotune._memo.clear()
  assert onednn.TARGET not in _traced_dense(scale=3.0)
  assert tuning.calls == 3 and tuning.candidates == {"rewrite", "xla"}


def test_xla_and_rewrite_force_a_form_without_measuring(tuning):
  assert "conv_general_dilated" in _traced("xla")
  assert "conv_general_dilated" not in _traced("rewrite")
  assert tuning.calls == 0


def test_measuring_can_be_turned_off_for_the_cpu_forms(tuning, monkeypatch):
  monkeypatch.setenv(autotune.MODE_ENV, "0")
  assert "conv_general_dilated" not in _traced()
  assert tuning.calls == 0


def test_a_corrupt_cache_file_is_measured_again_and_rewritten(tuning):
  path = autotune.cache_path()
  with open(path, "w") as f:
    f.write('{"half a file')
  _traced()
  assert tuning.calls == 1
  (records,) = json.loads(open(path).read()).values()
  assert [r["gradient"] for r in records.values()] == ["xla"]


def test_processes_tuning_at_once_keep_each_others_records(tmp_path):
  path = str(tmp_path / "forms.json")

  def store(writer):
    for i in range(10):
      autotune._store(path, "cpu", f"op {writer} {i}", {"choice": "xla"})

  threads = [threading.Thread(target=store, args=(w,)) for w in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert len(json.loads(open(path).read())["cpu"]) == 40
  assert not list(tmp_path.glob("*.tmp"))


class _FakeCoordination:
  """jax.distributed's key-value store, as two processes of one run share it."""

  def __init__(self):
    self.store = {}

  def key_value_set(self, key, value, allow_overwrite=False):
    assert allow_overwrite or key not in self.store
    self.store[key] = value

  def blocking_key_value_get(self, key, timeout_in_ms):
    if key not in self.store:
      raise RuntimeError("DEADLINE_EXCEEDED")
    return self.store[key]


def test_the_processes_of_a_run_take_process_0s_choice(tuning, monkeypatch, capsys):
  coordination = _FakeCoordination()
  monkeypatch.setattr(autotune, "_coordination_client", lambda: coordination)
  monkeypatch.setattr(jax, "process_index", lambda: 0)
  tuning.seconds = {"rewrite": {"forward": 2.0, "gradient": 1.0},
                    "xla": {"forward": 1.0, "gradient": 2.0}}
  assert "conv_general_dilated" in _traced()
  assert tuning.calls == 1 and list(coordination.store.values()) == ["xla,rewrite"]

  # Process 1, on a CPU that would measure the other way: process 0's forms, nothing timed.
  autotune._memo.clear()
  monkeypatch.setattr(autotune, "cpu_key", lambda: "another CPU")
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  tuning.seconds = {"rewrite": 1.0, "xla": 2.0}
  assert "conv_general_dilated" in _traced()
  assert tuning.calls == 1
  assert "another CPU" not in json.loads(open(autotune.cache_path()).read())

  # No word from process 0 (it died): the CPU form, said in a line, not a hang.
  autotune._memo.clear()
  coordination.store.clear()
  capsys.readouterr()
  assert "conv_general_dilated" not in _traced()
  assert "no choice from process 0" in capsys.readouterr().err


def test_inference_and_training_may_take_different_forms(tuning):
  tuning.seconds = {"xla": {"forward": 1.0, "gradient": 2.0},
                    "rewrite": {"forward": 2.0, "gradient": 1.0}}
  x, w = _operands()

  def f(x, w):
    with layers.conv_impl("auto"):
      return jnp.sum(jnp.sin(_depthwise(x, w)))

  assert "conv_general_dilated" in str(jax.make_jaxpr(f)(x, w))
  assert "conv_general_dilated" not in str(jax.make_jaxpr(jax.grad(f, argnums=(0, 1)))(x, w))
  assert tuning.calls == 1


@pytest.mark.parametrize("forward,gradient", [("rewrite", "rewrite"), ("xla", "xla"),
                                              ("xla", "rewrite"), ("rewrite", "xla")])
def test_every_choice_gives_the_same_values_and_gradients(tuning, forward, gradient):
  tuning.seconds = {name: {"forward": 1.0 if name == forward else 2.0,
                           "gradient": 1.0 if name == gradient else 2.0}
                    for name in autotune.CHOICES}
  x, w = _operands()
  pooled = normal(1, (2, 11, 11, 6))

  def loss(impl, x, w, pooled):
    with layers.conv_impl(impl):
      return jnp.sum(jnp.sin(_depthwise(x, w))) + jnp.sum(jnp.cos(layers.max_pool(pooled, 3, 2, 1)))

  want = jax.value_and_grad(loss, argnums=(1, 2, 3))("xla", x, w, pooled)
  got = jax.value_and_grad(loss, argnums=(1, 2, 3))("auto", x, w, pooled)
  np.testing.assert_allclose(loss("auto", x, w, pooled), want[0], rtol=1e-5)  # Not differentiated.
  assert tuning.calls == 2  # The conv and the pool.
  for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


def test_measure_times_both_forms_while_a_jit_traces_the_caller():
  seen = {}

  def f(x, w):
    seen.update(autotune.measure({"rewrite": lambda x, w: x @ w, "xla": lambda x, w: (w.T @ x.T).T},
                                 [x, w]))
    return x @ w

  jax.jit(f)(jnp.ones((8, 4)), jnp.ones((4, 3)))
  assert set(seen) == {"rewrite", "xla"}
  assert all(set(parts) == set(autotune.PARTS) and all(0 < s < 60 for s in parts.values())
             for parts in seen.values())


def test_a_near_tie_keeps_the_cpu_form(tuning):
  tuning.seconds = {"rewrite": autotune.MARGIN * 0.99, "xla": 1.0}  # XLA faster, within noise.
  assert "conv_general_dilated" not in _traced()
  assert tuning.calls == 1


def test_one_round_decides_only_when_the_fastest_form_is_clearly_ahead_of_every_other():
  # Two forms close together and one slow call of the third: more rounds tell the two apart.
  assert not autotune._clear_win([0.020, 0.023, 0.110])
  assert autotune._clear_win([0.010, 0.020, 0.021])
  assert autotune._clear_win([0.010, 0.016])
  assert not autotune._clear_win([0.010, 0.014])


def _scripted_rounds(monkeypatch, timings):
  """`_best_of_rounds` on runs whose n-th call takes timings[(form, part)][n] seconds (the last
  repeated); returns the best seconds and each run's number of calls."""
  monkeypatch.setattr(autotune, "_seconds", lambda run: run())
  calls = dict.fromkeys(timings, 0)

  def run(key):
    calls[key] += 1
    return timings[key][min(calls[key], len(timings[key])) - 1]

  runs = {key: (lambda key=key: run(key)) for key in timings}
  return autotune._best_of_rounds(runs), calls


def test_a_choice_near_the_margin_is_timed_for_more_rounds_until_it_is_clear(monkeypatch):
  # oneDNN's gradient: slow calls in the first rounds, its best only later; the CPU form's
  # steady. Three rounds would keep the CPU form (1.04x); the later calls give oneDNN (1.39x).
  timings = {("rewrite", "forward"): [4.6], ("onednn", "forward"): [5.4, 5.3],
             ("xla", "forward"): [9.4],
             ("rewrite", "gradient"): [25.0], ("onednn", "gradient"): [24.0, 26.0, 24.5, 18.0],
             ("xla", "gradient"): [29.0]}
  best, calls = _scripted_rounds(monkeypatch, timings)
  seconds = {name: {part: best[name, part] for part in autotune.PARTS}
             for name in ("rewrite", "onednn", "xla")}
  assert autotune._pick(seconds, "gradient") == "onednn"
  assert best["onednn", "gradient"] == 18.0
  # The forward: no form 1.5x ahead of all, but the CPU form the fastest, far from the margin's
  # edge: the usual rounds.
  assert autotune._pick(seconds, "forward") == "rewrite"
  assert calls["rewrite", "forward"] == autotune.ROUNDS
  assert calls["onednn", "gradient"] == 4  # Settled once oneDNN was 1.39x ahead.


def test_the_rounds_end_early_for_a_clear_win_seen_twice_and_at_the_cap_for_a_tie(monkeypatch):
  _, calls = _scripted_rounds(monkeypatch, {("rewrite", "forward"): [1.0],
                                            ("xla", "forward"): [2.0]})
  assert set(calls.values()) == {autotune.EARLY_ROUNDS}
  # One slow first call of the CPU form (as seen after compiling) does not decide for XLA: the
  # CPU form's next call, 1.5x faster than XLA's, does.
  best, calls = _scripted_rounds(monkeypatch, {("rewrite", "gradient"): [4.0, 1.0],
                                               ("xla", "gradient"): [2.0]})
  seconds = {name: {"gradient": best[name, "gradient"]} for name in ("rewrite", "xla")}
  assert autotune._pick(seconds, "gradient") == "rewrite"
  assert set(calls.values()) == {autotune.EARLY_ROUNDS}
  _, calls = _scripted_rounds(monkeypatch, {("rewrite", "gradient"): [1.1],
                                            ("xla", "gradient"): [1.0]})
  assert set(calls.values()) == {autotune.MAX_ROUNDS}

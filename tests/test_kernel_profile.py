"""experiments/cpu_speed/kernel_profile.py's accounting of a `jax.profiler` trace: a kernel that
XLA:CPU runs asynchronously (its own dots, its parallel loop fusions) lasts from its launch to
its `end:` event, not the launch's few microseconds, and kernels run side by side are found."""

import pytest

from cnn_jax import cli
from helpers import REPO_ROOT

WORKER, MAIN = 7, 1


@pytest.fixture(scope="module")
def kernel_profile():
  return cli.load_module(f"{REPO_ROOT}/experiments/cpu_speed/kernel_profile.py")


def _span(name, ts, dur, tid=WORKER):
  return {"ph": "X", "pid": 1, "tid": tid, "name": name, "ts": ts, "dur": dur}


def _trace(*spans):
  threads = [{"ph": "M", "pid": 1, "tid": WORKER, "name": "thread_name",
              "args": {"name": "tf_XLAEigen/123"}},
             {"ph": "M", "pid": 1, "tid": MAIN, "name": "thread_name",
              "args": {"name": "python"}}]
  return threads + list(spans)


def test_an_asynchronous_kernel_lasts_from_its_launch_to_its_end(kernel_profile):
  events = _trace(
      _span("ThunkExecutor::Execute", 0, 500),
      _span("dot.35", 10, 2),  # The launch; the dot's work runs as pool tasks.
      _span("ThreadpoolListener::StartRegion", 20, 0),
      _span("ynn_fusion.7", 15, 100),  # Synchronous: its own span.
      _span("end: ynn_fusion.7", 115, 0),
      _span("end: dot.35", 300, 1),
      _span("multiply_add_fusion.2", 310, 3),  # Launched, never ended in the trace.
      _span("run_step", 0, 900, tid=MAIN))
  kernels = {e["name"]: e["dur"] for e in kernel_profile.worker_kernels(events)}
  assert kernels == {"dot.35": 291, "ynn_fusion.7": 100, "multiply_add_fusion.2": 3}


def test_the_same_kernel_in_the_next_step_is_paired_with_its_own_end(kernel_profile):
  events = _trace(_span("dot.35", 0, 1), _span("end: dot.35", 40, 0),
                  _span("dot.35", 100, 1), _span("end: dot.35", 190, 0))
  assert [e["dur"] for e in kernel_profile.worker_kernels(events)] == [40, 90]


def test_kernels_side_by_side_are_counted_by_kind(kernel_profile):
  kernels = [_span("dot.1", 0, 100), _span("ynn_fusion.3", 40, 100),
             _span("ffi_call.2", 200, 10)]
  pairs = kernel_profile.overlaps(kernels)
  assert dict(pairs) == {("dot", "ynn_fusion"): 60}

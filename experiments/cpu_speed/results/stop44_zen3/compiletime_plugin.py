"""Stop 44: a pytest plugin that adds up, per test, JAX's compile, trace and lowering times
(jax.monitoring), the persistent compilation cache's reads, writes and hits, and Python's
garbage collection, and writes them as JSON per xdist worker when the session ends.

  PYTHONPATH=experiments/cpu_speed/results/stop44_zen3 CT_OUT=/tmp/ct.json \\
    .venv/bin/python -m pytest -p compiletime_plugin -n 2 tests

Summed figures in compile_breakdown.txt beside this file.
"""

import collections
import gc
import json
import os
import time

import pytest

_totals: collections.Counter = collections.Counter()
_per_test: dict[str, tuple[float, dict[str, float]]] = {}
_gc_started = [0.0]
_installed = [False]


def _add_duration(event: str, duration: float, **_) -> None:
  _totals[event] += duration


def _count(event: str, **_) -> None:
  _totals["n:" + event] += 1


def _time_gc(phase: str, info: dict) -> None:
  if phase == "start":
    _gc_started[0] = time.perf_counter()
  else:
    _totals[f"gc_gen{info['generation']}"] += time.perf_counter() - _gc_started[0]


def _timed(module, name: str, key: str) -> None:
  function = getattr(module, name)

  def wrapper(*args, **kwargs):
    start = time.perf_counter()
    try:
      return function(*args, **kwargs)
    finally:
      _totals[key] += time.perf_counter() - start

  setattr(module, name, wrapper)


def _install() -> None:
  import jax  # pylint: disable=import-outside-toplevel
  from jax._src import compiler  # pylint: disable=import-outside-toplevel
  jax.monitoring.register_event_duration_secs_listener(_add_duration)
  jax.monitoring.register_event_listener(_count)
  gc.callbacks.append(_time_gc)
  _timed(compiler, "_cache_write", "cache_write")
  _timed(compiler, "_cache_read", "cache_read")
  _installed[0] = True


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):  # pylint: disable=unused-argument
  if not _installed[0]:
    _install()
  before = dict(_totals)
  start = time.perf_counter()
  yield
  wall = time.perf_counter() - start
  _per_test[item.nodeid] = (wall, {k: v - before.get(k, 0) for k, v in _totals.items()
                                   if v - before.get(k, 0) > 0})


def pytest_sessionfinish(session):  # pylint: disable=unused-argument
  out = os.environ.get("CT_OUT", "/tmp/compiletime.json")
  worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
  with open(f"{out}.{worker}", "w") as f:
    json.dump(_per_test, f)

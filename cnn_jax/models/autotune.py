"""Which form of a conv, max pool or attention runs fastest on this CPU: XLA's op, the exact CPU
form of `cpu_ops` (`layers`' for the attention) or, for float32 convs and attention, oneDNN's
(`onednn`), measured once per CPU model and op shape and cached on disk (as cuDNN's benchmark
mode), instead of a fixed rule tuned on one kind of CPU.

`layers` asks `choose` while it traces an op that has a CPU form, under the
"auto" conv impl on CPU. The first time a shape is met on a CPU model, the forms are timed on
random operands of exactly that shape and dtype, forward alone (what inference runs) and forward
+ backward (what a train step runs, where the gradient dominates), and the fastest of each is
recorded in `cache_path()`, a JSON file of
{CPU key: {op key: record}}; later traces, in this process or any other, read it. A CPU key
names the model and the vector extensions ("AMD EPYC" alone names both a Zen 3 with AVX2 and a
Zen 4 with AVX-512); an op key names the shapes, dtype and parameters of the op together with the
jax version and the XLA:CPU flags, which change XLA's kernels, and a digest of the forms'
sources. In a run of many processes, process 0 alone measures (or reads its
cache) and hands each choice to the others through jax.distributed's key-value store.

Every form gives the same values and gradients (float rounding; tests/test_conv_rewrite.py and
tests/test_onednn.py), so the choice changes only speed. Environment:
  CNN_JAX_CACHE_DIR       the cache directory (default $XDG_CACHE_HOME/cnn_jax or ~/.cache/cnn_jax)
  CNN_JAX_CONV_AUTOTUNE=0 no measuring: always the CPU form, the rule before measuring existed
                          (the test suite runs so, for a program that does not depend on timings)
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from cnn_jax import hostenv
from cnn_jax.hostenv import cpu_key  # Looked up here at each call: tests stand in other CPUs.

MODE_ENV = "CNN_JAX_CONV_AUTOTUNE"
CACHE_NAME = "conv_forms.json"
# The CPU form, XLA's op, oneDNN's conv (float32 convs, where it is built): the names of
# `layers.conv_impl`.
CHOICES = ("rewrite", "xla", "onednn")
_NAMES = {"rewrite": "CPU form", "xla": "XLA", "onednn": "oneDNN"}
PARTS = ("forward", "gradient")  # Timed: the op alone; the op with its backward.
DEFAULT = "rewrite"  # Where nothing is measured: the forms won on every CPU measured so far.

# Timed rounds (each form once per round, alternating, so a change in load hits both). Two rounds
# decide when a form is this many times faster than every other, as XLA's depthwise conv or max
# pool usually is: not one, since one of a form's first calls after compiling is now and then
# 2-4x slow (seen with every form; one round so chose the CPU form for the attention in 6 of 13
# `bench` processes), and not when only the slowest is that far behind, which one such call
# would do.
EARLY_ROUNDS = 2
ROUNDS = 3
CLEAR_WIN = 1.5
# Another form replaces the CPU form only when it is this much faster alone: within that, timings on
# a shared machine are noise, and an isolated timing misses what the forms save around them in a
# whole step (the transposed gradient copies that 2-D matmul operands avoid).
MARGIN = 1.1
# Where the CPU form and the fastest other are within this factor of `MARGIN` after `ROUNDS`, the
# choice is timed on, up to `MAX_ROUNDS`: a form whose calls vary (oneDNN's, its OpenMP team
# woken per call) shows its best only over more calls, and three rounds flipped the attention's
# choice between runs (experiments/cpu_speed, stop 39).
NEAR_MARGIN = 1.2
MAX_ROUNDS = 9

# How long another process of a run waits for process 0 to time a shape it reached first; process
# 0 may be that far behind (its own start-up, compile of earlier programs).
WAIT_MS = 30 * 60 * 1000

_memo: dict[tuple[str, str, str], Choice] = {}  # (cache file, CPU key, op key) -> choice
_unwritable_reported = False
_announced: list[str] = []  # The header line is printed once per process.


def enabled() -> bool:
  return os.environ.get(MODE_ENV, "1") != "0"


def cache_path() -> str:
  return os.path.join(hostenv.cache_dir(), CACHE_NAME)


def op_key(description: str) -> str:
  """`description` (the op and its static parameters) with what else decides its speed."""
  xla_cpu_flags = sorted(w for w in os.environ.get("XLA_FLAGS", "").split()
                         if w.startswith("--xla_cpu"))
  return (f"{description} | jax {jax.__version__} | cpu_ops {_forms_version()} | "
          f"{' '.join(xla_cpu_flags) or 'no XLA:CPU flags'}")


@functools.cache
def _forms_version() -> str:
  """A digest of the forms' sources (cpu_ops, oneDNN's handlers and their wrapper, and the
  attention's forms in layers) and of the rule that times them and picks one: a choice timed
  against an earlier form, or by an earlier rule, is timed again."""
  import inspect  # pylint: disable=import-outside-toplevel

  from cnn_jax.models import cpu_ops, layers, onednn  # pylint: disable=import-outside-toplevel

  digest = hashlib.sha256()
  for path in (cpu_ops.__file__, onednn.__file__, onednn.SOURCE):
    with open(path, "rb") as f:
      digest.update(f.read())
  for code in (layers._attention_plain, layers._attention_forward, layers._attention_backward,
               layers._attention_backward_by_onednn, _best_of_rounds, _settled, _near_margin,
               _clear_win, _pick):
    digest.update(inspect.getsource(code).encode())
  digest.update(repr((EARLY_ROUNDS, ROUNDS, CLEAR_WIN, MARGIN, NEAR_MARGIN, MAX_ROUNDS)).encode())
  return digest.hexdigest()[:12]


def _load(path: str) -> dict[str, Any]:
  try:
    with open(path) as f:
      data = json.load(f)
  except (OSError, ValueError):
    return {}  # Missing, unreadable or corrupt: measured again and rewritten.
  return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
  """An exclusive lock beside `path` where the file system has them, so that processes tuning
  at once merge their records instead of overwriting each other's."""
  try:
    import fcntl
    lock = open(path + ".lock", "a")
  except (ImportError, OSError):
    yield
    return
  with lock:
    with contextlib.suppress(OSError):
      fcntl.flock(lock, fcntl.LOCK_EX)
    yield


def _store(path: str, cpu: str, key: str, record: Mapping[str, Any]) -> None:
  """Adds `record` under (cpu, key), written to a temporary file and renamed into place: a
  reader never sees half a file."""
  global _unwritable_reported
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with _locked(path):
      data = _load(path)
      entries = data.get(cpu)
      data[cpu] = {**(entries if isinstance(entries, dict) else {}), key: dict(record)}
      fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
      try:
        with os.fdopen(fd, "w") as f:
          json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
      except BaseException:
        os.unlink(tmp)
        raise
  except OSError as e:
    if not _unwritable_reported:  # The choice still holds for this process.
      print(f"conv autotune: cannot write {path} ({e}); choices are not cached", file=sys.stderr,
            flush=True)
      _unwritable_reported = True


def _random_operands(avals: Sequence[Any], rng: np.random.Generator) -> list[jax.Array]:
  return [jax.device_put(rng.standard_normal(a.shape).astype(a.dtype)) for a in avals]


def _seconds(run: Callable[[], Any]) -> float:
  start = time.perf_counter()
  jax.block_until_ready(run())
  return time.perf_counter() - start


def measure(candidates: Mapping[str, Callable[..., jax.Array]], avals: Sequence[Any]
            ) -> dict[str, dict[str, float]]:
  """{candidate: {"forward": s, "gradient": s}}: seconds of a forward and of a forward +
  backward (`jax.vjp` with a random cotangent) of each candidate on random operands of `avals`'
  shapes and dtypes; the best of alternating rounds after one untimed (compiling) call each
  (`_best_of_rounds`)."""
  rng = np.random.default_rng(0)
  with jax.ensure_compile_time_eval():  # Run now, even while a jit traces the caller.
    operands = _random_operands(avals, rng)
    out = jax.eval_shape(next(iter(candidates.values())), *operands)
    cotangent = _random_operands([out], rng)[0]
    runs = {}
    for name, fn in candidates.items():
      forward = jax.jit(fn)
      gradient = jax.jit(lambda *xs, fn=fn: jax.vjp(fn, *xs[:-1])[1](xs[-1]))
      runs[name, "forward"] = functools.partial(forward, *operands)
      runs[name, "gradient"] = functools.partial(gradient, *operands, cotangent)
    for run in runs.values():
      jax.block_until_ready(run())
    best = _best_of_rounds(runs)
  return {name: {part: best[name, part] for part in PARTS} for name in candidates}


def _best_of_rounds(runs: Mapping[tuple[str, str], Callable[[], Any]]
                    ) -> dict[tuple[str, str], float]:
  """{(form, part): the least seconds of its calls}, each `run` called once per round in turn;
  a part is no longer timed once `_settled` says its choice is."""
  best = dict.fromkeys(runs, float("inf"))
  pending = {part for _, part in runs}
  for rounds in range(1, MAX_ROUNDS + 1):
    for (name, part), run in runs.items():
      if part in pending:
        best[name, part] = min(best[name, part], _seconds(run))
    pending = {part for part in pending if not _settled(
        {name: s for (name, p), s in best.items() if p == part}, rounds)}
    if not pending:
      break
  return best


def _settled(seconds: Mapping[str, float], rounds: int) -> bool:
  """Whether `rounds` rounds of the forms' best `seconds` for one part decide it: `EARLY_ROUNDS`
  where a form is clearly fastest, `ROUNDS` unless the CPU form and the fastest other are near
  the margin that `_pick` applies, `MAX_ROUNDS` in any case."""
  if rounds < EARLY_ROUNDS:
    return False
  if rounds < ROUNDS:
    return _clear_win(list(seconds.values()))
  return rounds >= MAX_ROUNDS or not _near_margin(seconds)


def _near_margin(seconds: Mapping[str, float]) -> bool:
  others = [s for name, s in seconds.items() if name != DEFAULT]
  if DEFAULT not in seconds or not others:
    return False
  ratio = seconds[DEFAULT] / min(others)
  return MARGIN / NEAR_MARGIN < ratio < MARGIN * NEAR_MARGIN


def _clear_win(seconds: Sequence[float]) -> bool:
  fastest, runner_up = sorted(seconds)[:2]
  return runner_up > CLEAR_WIN * fastest


class Choice(NamedTuple):
  """The form (one of `CHOICES`) for an op's forward where nothing differentiates it
  (inference), and for its forward + backward where something does (training)."""
  forward: str
  gradient: str


def choose(description: str, candidates: Mapping[str, Callable[..., jax.Array]],
           operands: Sequence[Any]) -> Choice:
  """The fastest of `candidates` (named "rewrite", "xla" and, where it applies, "onednn": the
  CPU form, XLA's op and oneDNN's conv, functions of `operands`), forward alone and with its
  backward, for this CPU and the op
  `description` names: from the cache or, the first time, measured (a line on stderr) and
  cached."""
  if not enabled():
    return Choice(DEFAULT, DEFAULT)
  avals = [jax.typeof(x) for x in operands]
  if not all(isinstance(d, int) for a in avals for d in a.shape):
    return Choice(DEFAULT, DEFAULT)  # Symbolic shapes (export): nothing to time.
  path, cpu, key = cache_path(), cpu_key(), op_key(description)
  memo_key = (path, cpu, key)
  if memo_key in _memo:
    return _memo[memo_key]
  client = _coordination_client()
  if client is not None and jax.process_index() != 0:
    _memo[memo_key] = _read_from_process_0(client, key, description)
    return _memo[memo_key]
  _memo[memo_key] = _measured_or_cached(description, candidates, avals, path, cpu, key)
  if client is not None:
    client.key_value_set(_shared_key(key), ",".join(_memo[memo_key]), allow_overwrite=True)
  return _memo[memo_key]


def _coordination_client() -> Any:
  """jax.distributed's client in a run of many processes; None in a single process."""
  if jax.process_count() == 1:
    return None
  from jax._src import distributed  # pylint: disable=import-outside-toplevel
  return distributed.global_state.client


def _shared_key(op: str) -> str:
  return "cnn_jax/conv_form/" + hashlib.sha256(op.encode()).hexdigest()[:32]


def _read_from_process_0(client: Any, op: str, description: str) -> Choice:
  """Process 0's choice. The processes of one run take the same forms: each timing on its own,
  at once, would make their timings compete and could split their choices (equally exact,
  but rounded differently)."""
  if not _announced:
    print("conv autotune: taking process 0's choice for each conv shape (it times new ones)",
          file=sys.stderr, flush=True)
    _announced.append("process 0")
  try:
    forward, gradient = client.blocking_key_value_get(_shared_key(op), WAIT_MS).split(",")
  except Exception as e:  # Process 0 died, or is that far behind: the rule, not a hang.
    print(f"conv autotune: no choice from process 0 for {description} ({type(e).__name__}); "
          f"the CPU form", file=sys.stderr, flush=True)
    return Choice(DEFAULT, DEFAULT)
  return Choice(forward, gradient)


def _pick(seconds: Mapping[str, Mapping[str, float]], part: str) -> str:
  """The fastest form for `part`; the CPU form unless another is `MARGIN` times faster."""
  fastest = min(seconds, key=lambda name: seconds[name][part])
  if seconds[fastest][part] * MARGIN < seconds[DEFAULT][part]:
    return fastest
  return DEFAULT


def _measured_or_cached(description: str, candidates: Mapping[str, Callable[..., jax.Array]],
                        avals: Sequence[Any], path: str, cpu: str, key: str) -> Choice:
  record = _load(path).get(cpu, {})
  record = record.get(key) if isinstance(record, dict) else None
  # A record is of these candidates: one made where oneDNN could not run is made again where
  # it can, and one that chose oneDNN is not taken where it cannot.
  if not (isinstance(record, dict) and all(record.get(part) in candidates for part in PARTS)
          and all(f"{name}_{part}_s" in record for name in candidates for part in PARTS)):
    start = time.perf_counter()
    seconds = measure(candidates, avals)
    record = {part: _pick(seconds, part) for part in PARTS}
    record.update({f"{name}_{part}_s": round(seconds[name][part], 6)
                   for name in candidates for part in PARTS})
    if not _announced:
      print(f"conv autotune: timing the forms of each new conv (or attention) shape ("
            f"{', '.join(_NAMES[name] for name in candidates)}), once for this CPU; cached in "
            f"{path}", file=sys.stderr, flush=True)
      _announced.append(path)
    print(f"  {description}: " + "; ".join(
        f"{part} " + ", ".join(f"{_NAMES[name]} {seconds[name][part] * 1e3:.1f} ms"
                               for name in candidates) + f" -> {_NAMES[record[part]]}"
        for part in PARTS) + f" ({time.perf_counter() - start:.1f} s)", file=sys.stderr,
        flush=True)
    _store(path, cpu, key, record)
  return Choice(record["forward"], record["gradient"])

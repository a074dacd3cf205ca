"""One training run per workdir: a lock file that names its holder.

Two runs writing checkpoints into one workdir (a requeued job racing a manual rerun, a typo in
--workdir) would corrupt each other. The run's process 0 creates WORKDIR/.lock (O_EXCL) with
its host, pid, start time and SLURM job; a second run finds it and stops with one line naming
the holder. A holder that died leaves the file behind, so a lock is stale, and taken over, when
  - its holder ran on this host and its pid is gone, or
  - it belongs to this same SLURM job (a requeued job, or the same array element, whose
    earlier run was killed), or
  - its holder stopped refreshing it (a thread touches it every REFRESH_S seconds; older than
    STALE_S: a holder on another host that died).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from cnn_jax.errors import UserError

LOCK_NAME = ".lock"
REFRESH_S = 30.0
STALE_S = 300.0


def _slurm_job() -> str | None:
  env = os.environ
  if env.get("SLURM_ARRAY_JOB_ID"):
    return f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '')}"
  return env.get("SLURM_JOB_ID")


def _me() -> dict[str, Any]:
  return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": _slurm_job(),
          "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Someone else's process: alive.
    return True
  return True


def read_holder(path: str) -> dict[str, Any] | None:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}  # Being written, or garbage: judged by its age alone.


def stale_reason(path: str, holder: dict[str, Any]) -> str | None:
  """Why the lock at `path` no longer protects a live run (None: it does)."""
  me = _me()
  if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int):
    if holder["pid"] == me["pid"]:
      return "held by this process"
    if not _pid_alive(holder["pid"]):
      return f"its holder (pid {holder['pid']}) is gone"
  if me["slurm_job"] and holder.get("slurm_job") == me["slurm_job"]:
    return f"left by an earlier run of SLURM job {me['slurm_job']}"
  try:
    age = time.time() - os.path.getmtime(path)
  except OSError:
    return "gone"
  if age > STALE_S:
    return f"not refreshed for {age:.0f} s"
  return None


def describe(holder: dict[str, Any]) -> str:
  if not holder:
    return "an unreadable lock"
  job = f", SLURM job {holder['slurm_job']}" if holder.get("slurm_job") else ""
  return f"pid {holder.get('pid')} on {holder.get('host')}{job}, since {holder.get('started')}"


def acquire(workdir: str) -> dict[str, Any]:
  """Creates WORKDIR/.lock for this process, or raises UserError naming the live holder."""
  path = os.path.join(workdir, LOCK_NAME)
  me = _me()
  for _ in range(10):
    try:
      os.makedirs(workdir, exist_ok=True)
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      holder = read_holder(path)
      if holder is None:
        continue  # Released meanwhile: try again.
      reason = stale_reason(path, holder)
      if reason is None:
        raise UserError(f"workdir {workdir!r} is in use by another run ({describe(holder)}); "
                        f"wait for it, or remove {path} if that run is dead") from None
      # Set the stale lock aside under a name of our own: of two processes taking it over,
      # one rename succeeds and the other finds the winner's fresh lock.
      aside = f"{path}.stale.{me['host']}.{me['pid']}"
      try:
        os.rename(path, aside)
        os.remove(aside)
      except OSError:
        pass
      continue
    except OSError as e:
      raise UserError(f"cannot write to workdir {workdir!r}: {e.strerror or e}") from None
    with os.fdopen(fd, "w") as f:
      json.dump(me, f)
    return me
  raise UserError(f"could not take the lock {path}: it keeps changing hands")


def release(workdir: str, me: dict[str, Any]) -> None:
  path = os.path.join(workdir, LOCK_NAME)
  holder = read_holder(path)
  if holder and holder.get("pid") == me["pid"] and holder.get("host") == me["host"]:
    with contextlib.suppress(OSError):
      os.remove(path)


@contextlib.contextmanager
def hold(workdir: str, enabled: bool = True) -> Iterator[None]:
  """Holds the workdir's lock (when `enabled`: the run's process 0) while the body runs. A
  workdir this created and the body left empty (a run refused before it wrote anything, such
  as weights that do not fit) is removed with the lock."""
  if not enabled:
    yield
    return
  created = not os.path.exists(workdir)
  me = acquire(workdir)
  stop = threading.Event()

  def refresh() -> None:
    path = os.path.join(workdir, LOCK_NAME)
    while not stop.wait(REFRESH_S):
      with contextlib.suppress(OSError):
        os.utime(path)

  thread = threading.Thread(target=refresh, name="cnn_jax-workdir-lock", daemon=True)
  thread.start()
  try:
    yield
  finally:
    stop.set()
    thread.join(timeout=5)
    release(workdir, me)
    if created:
      with contextlib.suppress(OSError):  # Not empty (or another run's lock since): kept.
        os.rmdir(workdir)

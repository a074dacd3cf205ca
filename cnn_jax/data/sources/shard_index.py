"""Per-shard indexes (record offsets, labels) built once and cached outside the data directory.

An index is an int64 array computed by a scan of the shard; it is cached in `index_dir` under
a name derived from the shard's real path, size and modification time, so a replaced shard is
scanned again and nothing is ever written next to the data.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from collections.abc import Callable, Sequence

import numpy as np


def default_index_dir(kind: str) -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "cnn_jax", kind)


def cache_path(path: str, index_dir: str) -> str:
  stat = os.stat(path)
  key = f"{os.path.realpath(path)}|{stat.st_size}|{stat.st_mtime_ns}"
  return os.path.join(index_dir,
                      f"{os.path.basename(path)}.{hashlib.sha1(key.encode()).hexdigest()[:16]}.npy")


def _load(cached: str) -> np.ndarray | None:
  try:
    return np.load(cached)
  except (OSError, ValueError):
    return None  # Missing or unreadable: rebuilt, not trusted.


def _save(rows: np.ndarray, cached: str) -> None:
  os.makedirs(os.path.dirname(cached), exist_ok=True)
  # Written under a temporary name and renamed: an interrupted build leaves no index that
  # looks complete, and processes building the same index at once do not clash.
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(cached), suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      np.save(f, rows)
    os.replace(tmp, cached)
  except BaseException:
    os.unlink(tmp)
    raise


def cached_indexes(paths: Sequence[str], index_dir: str, scan: Callable[[str], np.ndarray],
                   what: str, *, progress: bool = True) -> list[np.ndarray]:
  """`scan(path)` of every shard, from the cache where present; the missing ones are scanned
  with a progress bar and ETA on stderr and cached."""
  caches = [cache_path(p, index_dir) for p in paths]
  rows = [_load(c) for c in caches]
  missing = [i for i, r in enumerate(rows) if r is None]
  if missing:
    from tqdm import tqdm

    with tqdm(total=sum(os.path.getsize(paths[i]) for i in missing), unit="B",
              unit_scale=True, disable=not progress, file=sys.stderr, leave=False,
              desc=f"indexing {len(missing)} {what} shards into {index_dir}") as bar:
      for i in missing:
        rows[i] = scan(paths[i])
        _save(rows[i], caches[i])
        bar.update(os.path.getsize(paths[i]))
  return rows


class ShardFiles:
  """Positional reads from a list of shard files, each opened once per process: the open
  descriptors are not pickled, so every grain worker process opens its own."""

  paths: Sequence[str]

  def __getstate__(self):
    state = dict(self.__dict__)
    state.pop("_fds", None)
    return state

  def read(self, shard: int, size: int, offset: int) -> bytes:
    fds = self.__dict__.setdefault("_fds", {})
    fd = fds.get(shard)
    if fd is None:
      fd = fds[shard] = os.open(self.paths[shard], os.O_RDONLY)
    return os.pread(fd, size, offset)

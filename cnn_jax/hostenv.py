"""Settings of the process itself that must be in place before JAX starts its backend.

The command-line tools apply them through `cli.run` (`cli.apply_process_settings`); importing
cnn_jax changes nothing, so a notebook or a script decides for itself (call `set_xla_flags()`
before the first JAX computation to get the same convolutions).

Transparent huge pages for the heap: XLA:CPU allocates every step's temporaries afresh, and with
the kernel's default `madvise` policy glibc backs them with 4 KiB pages, so a train step spends
much of its time in page faults on gigabytes of new memory. glibc >= 2.35 asks for huge pages
when `GLIBC_TUNABLES` holds `glibc.malloc.hugetlb=1`, read only at process start, so the heavy
tools (`HEAVY_TOOLS`) re-run themselves once with it set. Results are unchanged; only speed.
`CNN_JAX_HUGEPAGES=0` opts out; a `GLIBC_TUNABLES` that already sets hugetlb is respected.

XLA:CPU flags (`XLA_CPU_FLAGS`), added to `XLA_FLAGS`: convolutions by XLA's own kernels rather
than YNNPACK's, faster on every model measured and no change to results beyond float rounding.
A flag that `XLA_FLAGS` already names keeps the user's value; `CNN_JAX_XLA_FLAGS=0` adds none.
Both settings are environment variables, so the processes a tool starts inherit them (and
sbatch hands them to SLURM jobs under its default `--export=ALL`). The figures behind both
choices: experiments/cpu_speed/README.md.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping, Sequence

HUGEPAGE_TUNABLE = "glibc.malloc.hugetlb=1"
# `python -m cnn_jax.<tool>` launches that run compiled steps, or start processes that do and
# inherit this environment (launch's SLURM jobs, sweep's points). Light tools (convert, summary)
# would only pay the re-run.
HEAVY_TOOLS = ("cnn_jax.main", "cnn_jax.sweep", "cnn_jax.launch", "cnn_jax.bench",
               "cnn_jax.erf", "cnn_jax.predict", "cnn_jax.data_bench")

# YNNPACK's conv kernels lose to XLA's own on the convs' gradients, which dominate a CNN's CPU
# step.
XLA_CPU_FLAGS = {"--xla_cpu_experimental_ynn_fusion_type": "-individual_convolution"}


def xla_flags(environ: Mapping[str, str]) -> str | None:
  """`XLA_FLAGS` with the XLA:CPU flags it does not name yet, or None when nothing is added."""
  if environ.get("CNN_JAX_XLA_FLAGS") == "0":
    return None
  current = environ.get("XLA_FLAGS", "")
  named = {word.split("=", 1)[0] for word in current.split()}
  missing = [f"{name}={value}" for name, value in XLA_CPU_FLAGS.items() if name not in named]
  return " ".join([current, *missing]).strip() if missing else None


def set_xla_flags() -> None:
  """Adds `xla_flags` to this process's environment (and so to the tools' re-runs)."""
  value = xla_flags(os.environ)
  if value is not None:
    os.environ["XLA_FLAGS"] = value


def _launched_tool(argv: Sequence[str]) -> str | None:
  for i, arg in enumerate(argv[:-1]):
    if arg == "-m":
      return argv[i + 1]
  return None


def hugepage_env(argv: Sequence[str], environ: Mapping[str, str],
                 libc: tuple[str, str]) -> dict[str, str] | None:
  """The environment to re-run `argv` with, or None when this process should just go on."""
  if _launched_tool(argv) not in HEAVY_TOOLS or environ.get("CNN_JAX_HUGEPAGES") == "0":
    return None
  name, version = libc
  if name != "glibc" or tuple(int(p) for p in version.split(".")[:2]) < (2, 35):
    return None
  tunables = environ.get("GLIBC_TUNABLES", "")
  if "glibc.malloc.hugetlb=" in tunables:
    return None
  env = dict(environ)
  env["GLIBC_TUNABLES"] = f"{tunables}:{HUGEPAGE_TUNABLE}" if tunables else HUGEPAGE_TUNABLE
  return env


def reexec_with_hugepages() -> None:
  """Replaces this process with the same command under huge pages, when `hugepage_env` says so.

  Called by `cli.run` before the tool's flags are parsed (and so before any JAX backend)."""
  if not sys.platform.startswith("linux"):
    return
  argv = list(getattr(sys, "orig_argv", []))
  env = hugepage_env(argv, os.environ, platform.libc_ver())
  if env is not None and argv:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv[1:]], env)

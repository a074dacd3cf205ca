"""Settings of the process itself that must be in place before JAX starts its backend.

The command-line tools apply them through `cli.run` (`cli.apply_process_settings`), a SLURM
job's process through `configure_jax`; importing cnn_jax changes nothing, so a notebook or a
script decides for itself (call `configure_jax()`, or `set_xla_flags()` alone for the same
convolutions, before the first JAX computation).

glibc's malloc settings (`MALLOC_TUNABLES`): XLA:CPU allocates every step's temporaries afresh,
hundreds of MB to GBs in one block. With the kernel's default `madvise` policy glibc backs new
memory with 4 KiB pages, so a step spent much of its time in page faults; `glibc.malloc.hugetlb=1`
(glibc >= 2.35) asks for huge pages. Even then a block above glibc's mmap threshold is mapped
afresh and unmapped again every step, and the kernel zeroes its pages each time (10-20 % of a
CIFAR ResNet's step on 2 cores). The raised mmap and trim thresholds keep such blocks in the
heap for the next step, but only the main thread's heap can hold them (another thread's arena
is at most 64 MB, and glibc maps the rest anyway); so where these settings hold, `configure_jax`
also runs a one-device CPU program inline, on the calling thread, instead of on XLA's
dispatch thread (`cpu_runs_inline`). XLA:CPU's kernels still run on its own threads.
`GLIBC_TUNABLES` is read only at process start, so the heavy tools (`HEAVY_TOOLS`) re-run
themselves once with these settings. Results are unchanged; only speed and memory (the heap
keeps what a step freed, for the next). `CNN_JAX_HUGEPAGES=0` opts out; a tunable that
`GLIBC_TUNABLES` already names keeps its value. A process whose JAX will run on a GPU or TPU
(`runs_on_accelerator`) gets none of them: its steps' temporaries are in the accelerator's
memory, and a heap that keeps up to 4 GiB freed would only grow its host side (the input
pipeline's batches), unmeasured; so a SLURM job given GPUs starts without them too
(`without_malloc_tunables`, used by launch and sweep).

XLA:CPU flags (`XLA_CPU_FLAGS`), added to `XLA_FLAGS`: convolutions by XLA's own kernels rather
than YNNPACK's, faster on every model measured and no change to results beyond float rounding.
The forward-only programs of a ConvNeXt without GRN (`forward_compiler_options`: the eval
step, predict) compile with YNNPACK on their dots alone, which spares them gigabytes of constants
written out at full size. A flag that `XLA_FLAGS` already names keeps the user's value;
`CNN_JAX_XLA_FLAGS=0` adds none.
Both settings are environment variables, so the processes a tool starts inherit them (and
sbatch hands them to SLURM jobs under its default `--export=ALL`). The figures behind both
choices: experiments/cpu_speed/README.md.

JAX's persistent compilation cache (`use_compilation_cache`): a tool run loads the executables
that an earlier run with the same programs compiled, instead of compiling them again (a rerun,
a resumed run, a sweep's points, the same model evaluated again). A loaded
executable is the compiled one, so no result changes. JAX's cache key names the program, the
jax and jaxlib versions, the XLA flags and the device kind, but on CPU not which CPU: XLA:CPU
compiles for the host's vector extensions, so the cache has one directory per CPU model
(`cpu_key`), and a home directory shared by a cluster's different nodes keeps them apart. Each
tool process picks its own directory; `JAX_COMPILATION_CACHE_DIR` set by the user wins, and
`CNN_JAX_COMPILE_CACHE=0` turns it off. `cnn_jax.bench` compiles afresh: its compile time is
one of its measurements.

Tracing without a quadratic (`cheap_tracer_sharding_probe`): flax NNX asks every value assigned
to a Variable for its `.sharding` (`getattr(value, "sharding", None)`), and a JAX tracer answers
with an AttributeError whose message walks every equation traced so far to say where the tracer
came from. Nobody reads that message, but building a model under a trace (`nnx.eval_shape`, the
compiled initialiser) pays it once per parameter, O(n^2) in the model's size (figures:
experiments/cpu_speed/README.md). The setting drops that part of the message (as JAX's own later
fix does, jax-ml/jax#40041) and changes nothing else; a JAX whose tracers no longer build it is
left alone.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import re
import sys
from collections.abc import Callable, Mapping, Sequence

# Huge pages for the heap; blocks up to 4 GiB kept in the heap, and kept when freed.
MALLOC_TUNABLES = ("glibc.malloc.hugetlb=1", "glibc.malloc.mmap_threshold=4294967296",
                   "glibc.malloc.trim_threshold=4294967296")
# `python -m cnn_jax.<tool>` launches that run compiled steps, or start processes that do and
# inherit this environment (launch's SLURM jobs, sweep's points). Light tools (convert, summary)
# would only pay the re-run.
HEAVY_TOOLS = ("cnn_jax.main", "cnn_jax.sweep", "cnn_jax.launch", "cnn_jax.bench",
               "cnn_jax.erf", "cnn_jax.predict", "cnn_jax.data_bench")

# Where JAX_PLATFORMS is unset, JAX's default backend is an accelerator whose plugin is installed
# and whose device is present: (plugin module, device files).
ACCELERATOR_PLUGINS = (
    ("jax_plugins.xla_cuda12", ("/dev/nvidiactl",)),  # jax[cuda12]'s PJRT plugin
    ("jax_plugins.xla_cuda13", ("/dev/nvidiactl",)),
    ("jax_cuda12_plugin", ("/dev/nvidiactl",)),
    ("jax_cuda13_plugin", ("/dev/nvidiactl",)),
    ("libtpu", ("/dev/accel0", "/dev/vfio/0")),
)

CACHE_ENV = "CNN_JAX_CACHE_DIR"
COMPILE_CACHE_ENV = "CNN_JAX_COMPILE_CACHE"
# Tools that report compile time: a cached executable would be a load, not a compile.
COMPILE_TIMING_TOOLS = ("cnn_jax.bench",)
# Executables kept in the compilation cache, least recently used evicted first (JAX's own LRU).
COMPILE_CACHE_MAX_BYTES = 4 * 1024**3

# YNNPACK's conv kernels lose to XLA's own on the convs' gradients, which dominate a CNN's CPU
# step.
XLA_CPU_FLAGS = {"--xla_cpu_experimental_ynn_fusion_type": "-individual_convolution"}
# A ConvNeXt's forward pass alone (an eval step, predict) compiles with YNNPACK on the dots only.
# With the elementwise ops and reductions fused into its dots too, YNNPACK takes no constants,
# so XLA writes out every constant those fusions use at the activation's full size (a block's
# GELU: three f32[N*H*W, 4C] tensors), ~0.9 GB per ConvNeXt-T batch of 32. A train step, and a
# ViT's forward, keep the process's setting: there the wider fusions are faster.
INFERENCE_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def xla_flags(environ: Mapping[str, str]) -> str | None:
  """`XLA_FLAGS` with the XLA:CPU flags it does not name yet, or None when nothing is added."""
  if environ.get("CNN_JAX_XLA_FLAGS") == "0":
    return None
  current = environ.get("XLA_FLAGS", "")
  named = {word.split("=", 1)[0] for word in current.split()}
  missing = [f"{name}={value}" for name, value in XLA_CPU_FLAGS.items() if name not in named]
  return " ".join([current, *missing]).strip() if missing else None


def forward_compiler_options(model: object, environ: Mapping[str, str] | None = None,
                             backend: str | None = None) -> dict[str, str] | None:
  """`jax.jit`'s `compiler_options` for a program that runs `model` forward only (the eval
  step, predict): `INFERENCE_COMPILER_OPTIONS` on CPU for the models that ask for them with a
  true `cpu_forward_dots_only` (a ConvNeXt without GRN), unless `XLA_FLAGS` gives the flag a
  value of the user's own (not `XLA_CPU_FLAGS`'s) or `CNN_JAX_XLA_FLAGS=0`; otherwise None (the
  process's settings)."""
  if not getattr(model, "cpu_forward_dots_only", False):
    return None
  environ = os.environ if environ is None else environ
  if backend is None:
    import jax  # pylint: disable=import-outside-toplevel
    backend = jax.default_backend()
  ours = {f"{name}={value}" for name, value in XLA_CPU_FLAGS.items()}
  users = {word.split("=", 1)[0].lstrip("-") for word in environ.get("XLA_FLAGS", "").split()
           if word not in ours}
  if (backend != "cpu" or environ.get("CNN_JAX_XLA_FLAGS") == "0"
      or users & set(INFERENCE_COMPILER_OPTIONS)):
    return None
  return dict(INFERENCE_COMPILER_OPTIONS)


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


def _tunable_names(tunables: str) -> set[str]:
  return {item.split("=", 1)[0] for item in tunables.split(":") if item}


def runs_on_accelerator(environ: Mapping[str, str],
                        find_spec: Callable[[str], object] = importlib.util.find_spec,
                        exists: Callable[[str], bool] = os.path.exists) -> bool:
  """Whether JAX's default backend in a process with `environ` will be a GPU or TPU: the first
  platform `JAX_PLATFORMS` names or, where it is unset, one of `ACCELERATOR_PLUGINS` installed
  with its device present. Read before JAX starts, so it does not import JAX."""
  platforms = [p.strip().lower() for p in environ.get("JAX_PLATFORMS", "").split(",")
               if p.strip()]
  if platforms:
    return platforms[0] != "cpu"
  for module, devices in ACCELERATOR_PLUGINS:
    try:
      installed = find_spec(module) is not None
    except (ImportError, ValueError):
      installed = False
    if installed and any(exists(device) for device in devices):
      return True
  return False


def malloc_env(argv: Sequence[str], environ: Mapping[str, str],
               libc: tuple[str, str]) -> dict[str, str] | None:
  """The environment to re-run `argv` with (`MALLOC_TUNABLES` added to `GLIBC_TUNABLES`, but
  those it names already), or None when this process should just go on (not a heavy tool,
  opted out, no such glibc, or JAX will run on an accelerator)."""
  if _launched_tool(argv) not in HEAVY_TOOLS or environ.get("CNN_JAX_HUGEPAGES") == "0":
    return None
  if runs_on_accelerator(environ):
    return None
  name, version = libc
  if name != "glibc" or tuple(int(p) for p in version.split(".")[:2]) < (2, 35):
    return None
  tunables = environ.get("GLIBC_TUNABLES", "")
  named = _tunable_names(tunables)
  missing = [t for t in MALLOC_TUNABLES if t.split("=", 1)[0] not in named]
  if not missing:
    return None
  env = dict(environ)
  env["GLIBC_TUNABLES"] = ":".join([tunables, *missing] if tunables else missing)
  return env


def without_malloc_tunables(tunables: str) -> str:
  """`GLIBC_TUNABLES`' value without the entries `malloc_env` adds (a job given GPUs, started
  from a tool that runs on the CPU, e.g. launch on a login node); the user's own are kept."""
  return ":".join(t for t in tunables.split(":") if t and t not in MALLOC_TUNABLES)


def cpu_runs_inline(environ: Mapping[str, str]) -> bool:
  """Whether a one-device CPU program should run on the calling thread: where this process's
  heap keeps a step's temporaries (`MALLOC_TUNABLES`' thresholds in `GLIBC_TUNABLES`), which
  only the main thread's heap can."""
  present = set(environ.get("GLIBC_TUNABLES", "").split(":"))
  return all(t in present for t in MALLOC_TUNABLES[1:])


def configure_jax() -> None:
  """The settings of this process's JAX, before its backend starts: the XLA:CPU flags, the
  compilation cache, tracing without its quadratic and, under `MALLOC_TUNABLES`, one-device
  CPU programs run inline (for a tool, and for a SLURM job's process, which no tool started)."""
  set_xla_flags()
  use_compilation_cache()
  cheap_tracer_sharding_probe()
  run_cpu_inline_if_the_heap_keeps_temporaries()


def run_cpu_inline_if_the_heap_keeps_temporaries() -> None:
  """`jax_cpu_enable_async_dispatch` off where `cpu_runs_inline`: results are the same, the
  step's temporaries come from the main thread's heap (module docstring)."""
  if cpu_runs_inline(os.environ):
    import jax  # pylint: disable=import-outside-toplevel

    jax.config.update("jax_cpu_enable_async_dispatch", False)


def reexec_with_malloc_tunables() -> None:
  """Replaces this process with the same command under `MALLOC_TUNABLES`, when `malloc_env`
  says so.

  Called by `cli.run` before the tool's flags are parsed (and so before any JAX backend)."""
  if not sys.platform.startswith("linux"):
    return
  argv = list(getattr(sys, "orig_argv", []))
  env = malloc_env(argv, os.environ, platform.libc_ver())
  if env is not None and argv:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv[1:]], env)


# ------------------------------------------------------------------------------ caches


def cache_dir(environ: Mapping[str, str] | None = None) -> str:
  """cnn_jax's cache directory: $CNN_JAX_CACHE_DIR, else $XDG_CACHE_HOME/cnn_jax or
  ~/.cache/cnn_jax (the conv autotune's choices, the compilation cache)."""
  environ = os.environ if environ is None else environ
  return environ.get(CACHE_ENV) or os.path.join(
      environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
      "cnn_jax")


def cpu_key(cpuinfo: str | None = None) -> str:
  """This CPU's model and vector extensions, from /proc/cpuinfo (or `cpuinfo`'s text), e.g.
  'AuthenticAMD family 25 model 17 AMD EPYC [avx avx2 avx512bw ... fma]'."""
  if cpuinfo is None:
    try:
      with open("/proc/cpuinfo") as f:
        cpuinfo = f.read()
    except OSError:
      cpuinfo = ""
  fields: dict[str, str] = {}
  for line in cpuinfo.splitlines():
    name, _, value = line.partition(":")
    fields.setdefault(name.strip(), value.strip())
  if not fields.get("model name"):
    return f"{platform.machine()} {platform.processor()}".strip()
  vector = sorted(f for f in fields.get("flags", "").split()
                  if re.match(r"(avx|amx|fma|f16c|sve|neon|asimd)", f))
  return (f"{fields.get('vendor_id', '')} family {fields.get('cpu family', '?')} model "
          f"{fields.get('model', '?')} {fields['model name']} [{' '.join(vector)}]").strip()


def compilation_cache_dir(argv: Sequence[str], environ: Mapping[str, str],
                          cpu: str) -> str | None:
  """The compilation cache directory for the tool `argv` on CPU model `cpu`, or None: where the
  user chose (their own `JAX_COMPILATION_CACHE_DIR`, which JAX reads itself, or
  CNN_JAX_COMPILE_CACHE=0) and for a tool that times its compiles."""
  if (environ.get(COMPILE_CACHE_ENV) == "0" or environ.get("JAX_COMPILATION_CACHE_DIR")
      or _launched_tool(argv) in COMPILE_TIMING_TOOLS):
    return None
  digest = hashlib.sha256(cpu.encode()).hexdigest()[:16]
  return os.path.join(cache_dir(environ), "jax_compile", f"cpu-{digest}")


def use_compilation_cache() -> None:
  """Points this process's JAX at `compilation_cache_dir`, before its first compile. Not through
  the environment: a process this one starts may run on another node's CPU."""
  directory = compilation_cache_dir(getattr(sys, "orig_argv", []), os.environ, cpu_key())
  if directory is None:
    return
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_compilation_cache_max_size", COMPILE_CACHE_MAX_BYTES)


def cheap_tracer_sharding_probe() -> None:
  """A tracer's `.sharding` raises its AttributeError without the origin message (see above)."""
  from jax._src import core  # pylint: disable=import-outside-toplevel

  probe = core.Tracer.__dict__.get("sharding")
  if not isinstance(probe, property) or "_origin_msg" not in probe.fget.__code__.co_names:
    return  # Already cheap (or not the JAX this was written against).

  def sharding(tracer: core.Tracer) -> None:
    what = tracer._error_repr()  # pylint: disable=protected-access
    raise AttributeError(f"The 'sharding' attribute is not available on {what}.")

  core.Tracer.sharding = property(sharding)

"""The process settings of hostenv: the heavy command-line tools re-run themselves once with
glibc's malloc tunables (and then run one-device CPU programs inline), every tool adds the
XLA:CPU flags and uses a persistent compilation cache of its CPU model, and importing cnn_jax
does none of it."""

import json
import os
import platform
import subprocess
import sys
from types import SimpleNamespace

import pytest

from cnn_jax import hostenv
from helpers import HANG_TIMEOUT, REPO_ROOT, abstract_model

MAIN = ["python", "-m", "cnn_jax.main", "--config", "configs/lenet5_digits.py"]
GLIBC = ("glibc", "2.36")


OURS = ":".join(hostenv.MALLOC_TUNABLES)


def test_heavy_tools_get_the_tunables_once_and_keep_other_tunables():
  assert hostenv.MALLOC_TUNABLES[0] == "glibc.malloc.hugetlb=1"
  env = hostenv.malloc_env(MAIN, {"PATH": "/bin"}, GLIBC)
  assert env == {"PATH": "/bin", "GLIBC_TUNABLES": OURS}
  env = hostenv.malloc_env(MAIN, {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, GLIBC)
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:" + OURS
  # Already set (the re-run itself): no second re-run.
  assert hostenv.malloc_env(MAIN, env, GLIBC) is None
  # A tunable the user names keeps the user's value; the others are added.
  env = hostenv.malloc_env(MAIN, {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, GLIBC)
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=0:" + ":".join(
      hostenv.MALLOC_TUNABLES[1:])
  assert hostenv.malloc_env(MAIN, env, GLIBC) is None


@pytest.mark.parametrize("environ,installed,devices,expected", [
    ({"JAX_PLATFORMS": "cpu"}, {"jax_cuda12_plugin"}, {"/dev/nvidiactl"}, False),
    ({"JAX_PLATFORMS": "cuda,cpu"}, set(), set(), True),        # the first platform named
    ({"JAX_PLATFORMS": " CPU , cuda"}, set(), set(), False),
    ({"JAX_PLATFORMS": "tpu"}, set(), set(), True),
    ({}, {"jax_cuda12_plugin"}, {"/dev/nvidiactl"}, True),     # unset: plugin and device
    ({"JAX_PLATFORMS": ""}, {"jax_cuda13_plugin"}, {"/dev/nvidiactl"}, True),
    ({}, {"libtpu"}, {"/dev/vfio/0"}, True),
    ({}, {"jax_cuda12_plugin"}, set(), False),                 # a GPU venv on a CPU login node
    ({}, set(), {"/dev/nvidiactl"}, False),                    # a GPU, but the CPU-only venv
    ({}, {"libtpu"}, {"/dev/nvidiactl"}, False),
])
def test_a_process_runs_on_an_accelerator_by_jax_platforms_or_an_installed_plugin_and_device(
    environ, installed, devices, expected):
  assert hostenv.runs_on_accelerator(
      environ, find_spec=lambda m: object() if m in installed else None,
      exists=devices.__contains__) == expected


def test_no_malloc_settings_where_jax_runs_on_an_accelerator_nor_in_a_gpu_job():
  assert hostenv.malloc_env(MAIN, {"JAX_PLATFORMS": "cuda"}, GLIBC) is None
  assert hostenv.malloc_env(MAIN, {"JAX_PLATFORMS": "cpu"}, GLIBC) == {
      "JAX_PLATFORMS": "cpu", "GLIBC_TUNABLES": OURS}
  # What a GPU job is started with, from a tool that added them: the user's own only.
  assert hostenv.without_malloc_tunables(OURS) == ""
  assert hostenv.without_malloc_tunables(
      "glibc.malloc.arena_max=2:" + OURS) == "glibc.malloc.arena_max=2"
  assert hostenv.without_malloc_tunables(
      "glibc.malloc.hugetlb=0:" + ":".join(hostenv.MALLOC_TUNABLES[1:])) == "glibc.malloc.hugetlb=0"


def test_cpu_programs_run_inline_only_where_the_heap_keeps_their_temporaries():
  assert hostenv.cpu_runs_inline({"GLIBC_TUNABLES": OURS})
  assert hostenv.cpu_runs_inline({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:" + OURS})
  assert not hostenv.cpu_runs_inline({})
  assert not hostenv.cpu_runs_inline({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"})
  # The thresholds of the user's own: whether the heap keeps 4 GiB blocks is not known.
  assert not hostenv.cpu_runs_inline(
      {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=65536"})


@pytest.mark.parametrize("tool", ["cnn_jax.main", "cnn_jax.sweep", "cnn_jax.launch",
                                  "cnn_jax.predict", "cnn_jax.erf", "cnn_jax.bench"])
def test_tools_that_run_compiled_steps_or_start_processes_that_do_are_heavy(tool):
  env = hostenv.malloc_env(["python", "-m", tool], {}, GLIBC)
  assert env == {"GLIBC_TUNABLES": OURS}


@pytest.mark.parametrize("argv,environ,libc", [
    (["python", "-m", "cnn_jax.summary", "--model", "lenet5"], {}, GLIBC),  # not a heavy tool
    (["python", "-m", "cnn_jax.convert", "--model", "resnet18"], {}, GLIBC),
    (["python", "-m", "pytest"], {}, GLIBC),
    (["python", "script.py"], {}, GLIBC),
    (MAIN, {"CNN_JAX_HUGEPAGES": "0"}, GLIBC),                              # opted out
    (MAIN, {}, ("glibc", "2.31")),                                          # no hugetlb tunable
    (MAIN, {}, ("", "")),                                                   # musl, macOS
])
def test_no_rerun_where_it_does_not_apply(argv, environ, libc):
  assert hostenv.malloc_env(argv, environ, libc) is None


@pytest.mark.skipif(not sys.platform.startswith("linux")
                    or platform.libc_ver()[0] != "glibc", reason="glibc only")
@pytest.mark.parametrize("platforms,expected", [("cpu", OURS), ("cuda", "")])
def test_main_runs_with_the_tunables_on_the_cpu_only(tmp_path, platforms, expected):
  # The config file runs inside the launched process: it records the environment it sees.
  record = tmp_path / "tunables.txt"
  config = tmp_path / "probe.py"
  config.write_text(
      "import os\n"
      "def get_config():\n"
      f"  open({str(record)!r}, 'w').write(os.environ.get('GLIBC_TUNABLES', ''))\n"
      "  raise SystemExit(3)\n")
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "CNN_JAX_HUGEPAGES")}
  # The config is read before JAX starts a backend, so no GPU is needed to see what it gets.
  env["JAX_PLATFORMS"] = platforms
  result = subprocess.run([sys.executable, "-m", "cnn_jax.main", f"--config={config}",
                           f"--workdir={tmp_path / 'w'}"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=HANG_TIMEOUT)
  assert record.read_text() == expected, result.stderr[-2000:]


def test_xla_cpu_flags_are_added_once_and_a_users_own_value_wins():
  [(name, value)] = hostenv.XLA_CPU_FLAGS.items()
  assert hostenv.xla_flags({}) == f"{name}={value}"
  added = hostenv.xla_flags({"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert added == f"--xla_force_host_platform_device_count=8 {name}={value}"
  assert hostenv.xla_flags({"XLA_FLAGS": added}) is None
  assert hostenv.xla_flags({"XLA_FLAGS": f"{name}=individual_convolution"}) is None
  assert hostenv.xla_flags({"CNN_JAX_XLA_FLAGS": "0"}) is None


def test_the_compilation_cache_has_one_directory_per_cpu_model_and_the_user_decides():
  zen3 = "AuthenticAMD family 25 model 1 AMD EPYC [avx avx2 f16c fma]"
  zen4 = "AuthenticAMD family 25 model 17 AMD EPYC [avx avx2 avx512bw avx512f f16c fma]"
  environ = {"CNN_JAX_CACHE_DIR": "/cache"}
  on_zen3 = hostenv.compilation_cache_dir(MAIN, environ, zen3)
  assert on_zen3.startswith("/cache/jax_compile/")
  assert on_zen3 != hostenv.compilation_cache_dir(MAIN, environ, zen4)
  assert on_zen3 == hostenv.compilation_cache_dir(MAIN, dict(environ), zen3)
  home = hostenv.compilation_cache_dir(MAIN, {}, zen3)
  assert home.startswith(os.path.join(os.path.expanduser("~"), ".cache", "cnn_jax", ""))
  # The user's own directory (JAX reads it itself), or none at all.
  for choice in ({"JAX_COMPILATION_CACHE_DIR": "/mine"}, {"CNN_JAX_COMPILE_CACHE": "0"}):
    assert hostenv.compilation_cache_dir(MAIN, {**environ, **choice}, zen3) is None
  # The bench reports compile times: it compiles.
  bench = ["python", "-m", "cnn_jax.bench", "--model", "resnet50"]
  assert hostenv.compilation_cache_dir(bench, environ, zen3) is None


def test_a_convnexts_forward_programs_take_their_options_on_cpu_unless_the_user_set_the_flag():
  convnext, other = SimpleNamespace(cpu_forward_dots_only=True), SimpleNamespace()
  ours = hostenv.xla_flags({})  # What the tools' processes have in XLA_FLAGS.
  for environ in ({}, {"XLA_FLAGS": ours},
                  {"XLA_FLAGS": f"--xla_force_host_platform_device_count=8 {ours}"}):
    assert hostenv.forward_compiler_options(convnext, environ, "cpu") == (
        hostenv.INFERENCE_COMPILER_OPTIONS)
    assert hostenv.forward_compiler_options(other, environ, "cpu") is None
  assert hostenv.forward_compiler_options(convnext, {}, "gpu") is None
  assert hostenv.forward_compiler_options(convnext, {"CNN_JAX_XLA_FLAGS": "0"}, "cpu") is None
  users = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=individual_dot,eltwise"}
  assert hostenv.forward_compiler_options(convnext, users, "cpu") is None


# Run inside the probed process: does XLA:CPU hand a 3x3 conv to YNNPACK, what are XLA_FLAGS and
# GLIBC_TUNABLES there, and did the conv's compile come from the compilation cache?
_PROBE = """
import json, os, jax, jax.numpy as jnp
from jax._src import core
events = []
jax.monitoring.register_event_listener(lambda event, **kwargs: events.append(event))
x, w = jnp.ones((8, 28, 28, 32)), jnp.ones((3, 3, 32, 32))
conv = lambda x, w: jax.lax.conv_general_dilated(
    x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
compiled = jax.jit(conv).lower(x, w).compile()
ynn = '__ynn_fusion' in compiled.as_text()
probe = {'ynn': ynn, 'xla_flags': os.environ.get('XLA_FLAGS', ''),
         'tunables': os.environ.get('GLIBC_TUNABLES', ''),
         'cpu_async_dispatch': jax.config.read('jax_cpu_enable_async_dispatch'),
         'compilation_cache_dir': jax.config.jax_compilation_cache_dir,
         'cache_hit': '/jax/compilation_cache/cache_hits' in events,
         'cheap_sharding_probe': '_origin_msg' not in core.Tracer.sharding.fget.__code__.co_names}
"""


def _clean_env(environ_overrides: dict) -> dict:
  drop = ("XLA_FLAGS", "CNN_JAX_XLA_FLAGS", "GLIBC_TUNABLES", "CNN_JAX_HUGEPAGES",
          "JAX_COMPILATION_CACHE_DIR", "CNN_JAX_COMPILE_CACHE")
  env = {k: v for k, v in os.environ.items() if k not in drop}
  env.update(environ_overrides)
  return env


def _probe_tool(tmp_path, environ_overrides: dict) -> dict:
  """The probe, run by `python -m cnn_jax.main` while it loads its config file."""
  record = tmp_path / "probe.json"
  config = tmp_path / "probe_config.py"
  config.write_text("def get_config():\n" + "".join(f"  {line}\n" for line in _PROBE.split("\n"))
                    + f"  open({str(record)!r}, 'w').write(json.dumps(probe))\n"
                    "  raise SystemExit(3)\n")
  result = subprocess.run([sys.executable, "-m", "cnn_jax.main", f"--config={config}",
                           f"--workdir={tmp_path / 'w'}"], cwd=REPO_ROOT,
                          env=_clean_env(environ_overrides), capture_output=True, text=True,
                          timeout=HANG_TIMEOUT)
  assert record.exists(), result.stderr[-2000:]
  return json.loads(record.read_text())


def test_a_tool_gives_convolutions_to_xlas_own_kernels_and_caches_its_compiles(tmp_path):
  for run in ("default", "again", "opt_out"):
    (tmp_path / run).mkdir()
  # Every compile cached, however fast this machine compiles the probe's conv.
  cache = {"CNN_JAX_CACHE_DIR": str(tmp_path / "cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  probe = _probe_tool(tmp_path / "default", cache)
  assert not probe["ynn"] and probe["xla_flags"] == " ".join(
      f"{name}={value}" for name, value in hostenv.XLA_CPU_FLAGS.items())
  assert probe["cheap_sharding_probe"]
  # Re-run with the malloc settings, under which one-device CPU programs run inline.
  assert probe["tunables"] == OURS and not probe["cpu_async_dispatch"]
  directory = hostenv.compilation_cache_dir(MAIN, cache, hostenv.cpu_key())
  assert probe["compilation_cache_dir"] == directory and not probe["cache_hit"]
  assert any(name.endswith("-cache") for name in os.listdir(directory))
  # The next tool run on this CPU loads the conv instead of compiling it.
  assert _probe_tool(tmp_path / "again", cache)["cache_hit"]
  # The opt-outs, and the control: without the flag XLA:CPU hands this conv to YNNPACK.
  opted_out = _probe_tool(tmp_path / "opt_out", {**cache, "CNN_JAX_XLA_FLAGS": "0",
                                                 "CNN_JAX_COMPILE_CACHE": "0",
                                                 "CNN_JAX_HUGEPAGES": "0"})
  assert opted_out["ynn"] and opted_out["xla_flags"] == ""
  assert opted_out["tunables"] == "" and opted_out["cpu_async_dispatch"]
  assert opted_out["compilation_cache_dir"] is None and not opted_out["cache_hit"]


def test_importing_cnn_jax_sets_nothing_and_re_runs_nothing():
  # As if launched as `python -m cnn_jax.main`, but only importing: no XLA flag, no re-run.
  code = ("import sys, os\n"
          "sys.orig_argv[:] = [sys.executable, '-m', 'cnn_jax.main']\n"
          "os.execve = lambda *args: sys.exit('re-ran')\n"
          "import cnn_jax, cnn_jax.main, cnn_jax.train\n" + _PROBE + "print(json.dumps(probe))\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=_clean_env({}),
                          capture_output=True, text=True, timeout=HANG_TIMEOUT)
  assert result.returncode == 0, result.stderr[-2000:]
  probe = json.loads(result.stdout.strip().splitlines()[-1])
  assert probe == {"ynn": True, "xla_flags": "", "tunables": "", "cpu_async_dispatch": True,
                   "compilation_cache_dir": None, "cache_hit": False,
                   "cheap_sharding_probe": False}


def test_building_a_model_under_a_trace_no_longer_walks_the_trace_per_parameter(monkeypatch):
  import jax  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from jax._src.interpreters import partial_eval  # pylint: disable=import-outside-toplevel

  hostenv.cheap_tracer_sharding_probe()  # conftest applied it already: a second call keeps it
  walks = []
  frame = partial_eval.JaxprStackFrame
  walk = frame.find_progenitors
  monkeypatch.setattr(frame, "find_progenitors",
                      lambda self, tracer: walks.append(1) or walk(self, tracer))
  abstract = abstract_model("resnet20")
  assert sum(v.size for v in jax.tree.leaves(nnx.state(abstract, nnx.Param))) == 269_722
  assert not walks  # Before: a walk of the whole trace per parameter and RNG draw.

  def probe(x):
    assert getattr(x, "sharding", None) is None and not hasattr(x, "sharding")
    with pytest.raises(AttributeError, match="'sharding' attribute is not available"):
      x.sharding  # pylint: disable=pointless-statement
    # Other errors still say where the tracer came from.
    with pytest.raises(jax.errors.TracerBoolConversionError):
      bool(x.sum() > 0)
    return x

  jax.jit(probe)(jax.numpy.ones(3))
  assert walks

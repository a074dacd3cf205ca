"""Test set-up, before JAX starts a backend anywhere: 8 fake CPU devices, so 1-vs-8-device
equivalence runs in one process, and the XLA:CPU flags and the tracing setting the
command-line tools apply for themselves (cnn_jax/hostenv.py), so the tests run the convolutions
the tools run, and trace models as fast.

The conv autotune (cnn_jax/models/autotune.py) is off: "auto" takes the CPU forms without
timing anything, so no test spends seconds measuring conv shapes, and every test traces the
same program whatever this machine measured. tests/test_autotune.py turns it on for itself. The
cache directory is private to the session all the same, so nothing reads or writes the user's.

The repository root is on sys.path through pytest's `pythonpath` option (pyproject.toml).
"""

import os
import shutil
import sys
import tempfile

from cnn_jax import hostenv

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
hostenv.set_xla_flags()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("CNN_JAX_CONV_AUTOTUNE", "0")  # autotune.MODE_ENV (not imported: no jax yet)
hostenv.cheap_tracer_sharding_probe()  # Imports JAX: after the environment it reads.
hostenv.run_cpu_inline_if_the_heap_keeps_temporaries()  # As the tools' processes (make test).


def pytest_configure(config):
  """One cnn_jax cache directory (hostenv.CACHE_ENV: oneDNN's handler, built once for the
  workers and the subprocesses, and the conv autotune's records) and one JAX persistent
  compilation cache for the session, each in a fresh temporary directory. The pytest workers and
  every subprocess a test starts (the CLI runs inherit the environment) compile each distinct
  program once, where several tests and subprocesses run the same one (the kill -9 test's three
  identical training runs). A cached executable is the compiled one, so no result changes. A
  JAX_COMPILATION_CACHE_DIR set by the caller is left alone."""
  if hasattr(config, "workerinput"):
    return  # An xdist worker inherits the controller's settings below.
  cnn_jax_cache = tempfile.mkdtemp(prefix="cnn_jax_test_cache_")
  config.add_cleanup(lambda: shutil.rmtree(cnn_jax_cache, ignore_errors=True))
  os.environ[hostenv.CACHE_ENV] = cnn_jax_cache
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return
  cache_dir = tempfile.mkdtemp(prefix="cnn_jax_test_jit_")
  config.add_cleanup(lambda: shutil.rmtree(cache_dir, ignore_errors=True))
  min_compile_s = 0.5  # Faster compiles would load no faster from the cache.
  os.environ["JAX_COMPILATION_CACHE_DIR"] = cache_dir
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = str(min_compile_s)
  if "jax" in sys.modules:  # Imported already: it has read its environment.
    import jax  # pylint: disable=import-outside-toplevel
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_s)

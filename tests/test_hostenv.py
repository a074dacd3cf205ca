"""The command-line tools re-run themselves once with glibc's huge-page tunable (hostenv)."""

import os
import platform
import subprocess
import sys

import pytest

from cnn_jax import hostenv
from tests.helpers import REPO_ROOT

MAIN = ["python", "-m", "cnn_jax.main", "--config", "configs/lenet5_digits.py"]
GLIBC = ("glibc", "2.36")


def test_heavy_tools_get_the_tunable_once_and_keep_other_tunables():
  env = hostenv.hugepage_env(MAIN, {"PATH": "/bin"}, GLIBC)
  assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
  env = hostenv.hugepage_env(MAIN, {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, GLIBC)
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
  # Already set (the re-run itself, or the user's own choice): no second re-run.
  assert hostenv.hugepage_env(MAIN, env, GLIBC) is None
  assert hostenv.hugepage_env(MAIN, {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, GLIBC) is None


@pytest.mark.parametrize("argv,environ,libc", [
    (["python", "-m", "cnn_jax.summary", "--model", "lenet5"], {}, GLIBC),  # not a heavy tool
    (["python", "-m", "pytest"], {}, GLIBC),
    (["python", "script.py"], {}, GLIBC),
    (MAIN, {"CNN_JAX_HUGEPAGES": "0"}, GLIBC),                              # opted out
    (MAIN, {}, ("glibc", "2.31")),                                          # no hugetlb tunable
    (MAIN, {}, ("", "")),                                                   # musl, macOS
])
def test_no_rerun_where_it_does_not_apply(argv, environ, libc):
  assert hostenv.hugepage_env(argv, environ, libc) is None


@pytest.mark.skipif(not sys.platform.startswith("linux")
                    or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_main_runs_with_the_tunable(tmp_path):
  # The config file runs inside the launched process: it records the environment it sees.
  record = tmp_path / "tunables.txt"
  config = tmp_path / "probe.py"
  config.write_text(
      "import os\n"
      "def get_config():\n"
      f"  open({str(record)!r}, 'w').write(os.environ.get('GLIBC_TUNABLES', ''))\n"
      "  raise SystemExit(3)\n")
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "CNN_JAX_HUGEPAGES")}
  result = subprocess.run([sys.executable, "-m", "cnn_jax.main", f"--config={config}",
                           f"--workdir={tmp_path / 'w'}"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
  assert record.read_text() == "glibc.malloc.hugetlb=1", result.stderr[-2000:]


def test_xla_cpu_flags_are_added_once_and_a_users_own_value_wins():
  [(name, value)] = hostenv.XLA_CPU_FLAGS.items()
  assert hostenv.xla_flags({}) == f"{name}={value}"
  added = hostenv.xla_flags({"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert added == f"--xla_force_host_platform_device_count=8 {name}={value}"
  assert hostenv.xla_flags({"XLA_FLAGS": added}) is None
  assert hostenv.xla_flags({"XLA_FLAGS": f"{name}=individual_convolution"}) is None
  assert hostenv.xla_flags({"CNN_JAX_XLA_FLAGS": "0"}) is None


def _compiled_conv_text(environ_overrides: dict) -> str:
  """The compiled HLO of a 3x3 conv in a fresh process that imports cnn_jax before jax."""
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "CNN_JAX_XLA_FLAGS")}
  env.update(environ_overrides)
  code = ("import cnn_jax, jax, jax.numpy as jnp\n"
          "x, w = jnp.ones((8, 28, 28, 32)), jnp.ones((3, 3, 32, 32))\n"
          "conv = lambda x, w: jax.lax.conv_general_dilated(\n"
          "    x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))\n"
          "print(jax.jit(conv).lower(x, w).compile().as_text())\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  return result.stdout


def test_importing_cnn_jax_gives_convolutions_to_xlas_own_kernels():
  assert "__ynn_fusion" not in _compiled_conv_text({})
  # The control: without the flag XLA:CPU hands this conv to YNNPACK.
  assert "__ynn_fusion" in _compiled_conv_text({"CNN_JAX_XLA_FLAGS": "0"})

"""Small helpers shared by tests: load a repo config, run the CLI."""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import io
import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator

import ml_collections

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# How long a test waits on a subprocess before calling it hung. Generous on purpose: on a loaded
# machine (pytest -n, other jobs) a run's start-up and compile take several times their quiet
# time, and a wait that fails then says nothing about the code under test.
HANG_TIMEOUT = 900


def load_config(name: str, arg: str | None = None, **overrides) -> ml_collections.ConfigDict:
  """configs/<name>.py's get_config(arg), with dotted-key overrides ("data.batch_size": 32)."""
  path = os.path.join(REPO_ROOT, "configs", f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"test_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg) if arg is not None else module.get_config()
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def run_cli(module: str, *args: str, env: dict[str, str] | None = None,
            timeout: int = HANG_TIMEOUT) -> subprocess.CompletedProcess:
  full_env = {**os.environ, **(env or {})}
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=full_env,
                        capture_output=True, text=True, timeout=timeout)


def run_cli_in_process(module: str, *args: str) -> subprocess.CompletedProcess:
  """`python -m MODULE ARGS` as run_cli gives it back, run in this process the way cli.run
  runs a tool: its flags defined and parsed by cli.parse_flags (a flag or config error is the
  one `error:` line and exit 2), then its `main`, a UserError becoming that line too. What it
  leaves out is the process start (interpreter, imports, JAX backend: seconds per case) and
  cli.run's process settings; conftest's 8 devices stand in for the same XLA_FLAGS. The flags
  the tool defines are removed afterwards, so the next call defines them afresh. sys.argv
  holds the command meanwhile: config_flags reads the `--config.a.b=v` overrides from it.
  run_cli remains the check of a real process."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  from cnn_jax import cli  # pylint: disable=import-outside-toplevel
  from cnn_jax.errors import UserError  # pylint: disable=import-outside-toplevel
  tool = importlib.import_module(module)
  defined_before = set(flags.FLAGS)
  tool.define_flags()
  tool_flags = set(flags.FLAGS) - defined_before
  stdout, stderr = io.StringIO(), io.StringIO()
  returncode, command, argv_before = 0, [module, *args], sys.argv
  try:
    sys.argv = command
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
      try:
        argv = cli.parse_flags(command)
        try:
          tool.main(argv)
        except UserError as e:
          cli.fail(str(e))
      except SystemExit as e:
        returncode = e.code if isinstance(e.code, int) else int(e.code is not None)
  finally:
    sys.argv = argv_before
    # The tool's and its config flag's overrides (`config.a.b`), not those of a library its run
    # imported first (grain): they stay defined for good.
    for name in set(flags.FLAGS) - defined_before:
      if name.split(".")[0] in tool_flags:
        delattr(flags.FLAGS, name)
  return subprocess.CompletedProcess(command, returncode, stdout.getvalue(),
                                     stderr.getvalue())


def abstract_model(name: str, **options):
  """The registry's model `name` with ShapeDtypeStructs for arrays (nnx.eval_shape): free to
  build, even for the largest variants."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from cnn_jax.models import create_model  # pylint: disable=import-outside-toplevel
  return nnx.eval_shape(lambda: create_model(name, rngs=nnx.Rngs(0), **options))


def numpy_filled(model, seed: int = 0, *, std: float | None = None):
  """`model` (abstract, or built) with values drawn in NumPy, for a test that needs some
  model's values and not its initialisers': a full-size model's initialiser compiles for
  seconds, these compile nothing. Weights normal with `std` (He-scaled, sqrt(2 / fan_in), when
  None), vectors (biases, layer scales) normal with std 0.1, norm scales and BatchNorm running
  variances 1, running means 0, RNG streams' keys from `seed`."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  flat = nnx.to_flat_state(nnx.state(model))
  for path, var in flat:
    if jnp.issubdtype(var.dtype, jax.dtypes.prng_key):
      var.set_value(jax.random.split(jax.random.key(seed), var.shape) if var.shape
                    else jax.random.key(seed))
      continue
    if path[-1] in ("scale", "var"):
      value = np.ones(var.shape)
    elif path[-1] == "mean" or len(var.shape) == 0:
      value = np.zeros(var.shape)
    elif len(var.shape) == 1:
      value = rng.normal(size=var.shape) * 0.1
    else:
      weight_std = np.sqrt(2.0 / np.prod(var.shape[:-1])) if std is None else std
      value = rng.normal(size=var.shape) * weight_std
    var.set_value(jnp.asarray(value, var.dtype))
  nnx.update(model, nnx.from_flat_state(flat))
  return model


def numpy_random_model(name: str, seed: int, **options):
  """The registry's model `name`, built abstractly and `numpy_filled`: nothing compiles."""
  return numpy_filled(abstract_model(name, **options), seed)


def abstract_apply(model, shape: tuple[int, ...], *, method: str = "__call__", dtype=None):
  """The output ShapeDtypeStruct of `model.method` on an input of `shape` (float32 unless
  `dtype`), traced with jax.eval_shape: nothing is computed."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  graphdef, state = nnx.split(model)
  return jax.eval_shape(lambda s, x: getattr(nnx.merge(graphdef, s), method)(x), state,
                        jax.ShapeDtypeStruct(shape, dtype or jnp.float32))


@functools.cache
def _jitted_method(method: str):
  from flax import nnx  # pylint: disable=import-outside-toplevel
  return nnx.jit(lambda model, x: getattr(model, method)(x))


def compiled_apply(model, x, *, method: str = "__call__"):
  """`model.method(x)` as one compiled program, kept per model structure and input shape for
  the next call: op by op, every layer's ops compile one by one, seconds of CPU for even a
  small model."""
  return _jitted_method(method)(model, x)


@contextlib.contextmanager
def temporary_files_in(directory) -> Iterator[None]:
  """Within the block, `tempfile` makes its files and directories under `directory` (a tmp_path).
  TFDS's builder of a data set that is not prepared yet makes a temporary directory that it never
  removes (DatasetInfo.initialize_from_bucket); without this, each run left one in /tmp."""
  previous = tempfile.tempdir
  tempfile.tempdir = str(directory)
  try:
    yield
  finally:
    tempfile.tempdir = previous


def write_sweep_file(directory, *, workdir: str, overrides: list, points: list,
                     grid: list) -> str:
  """A sweep config file (configs/sweeps/ form) over configs/lenet5_digits.py; its path."""
  path = os.path.join(str(directory), "my_sweep.py")
  with open(path, "w") as f:
    f.write(textwrap.dedent(f"""
        import ml_collections

        def get_config():
          config = ml_collections.ConfigDict()
          config.name = "cli sweep"
          config.base_config = "configs/lenet5_digits.py"
          config.base_config_arg = ""
          config.workdir = {workdir!r}
          config.overrides = {overrides!r}
          config.points = {points!r}
          config.grid = {grid!r}
          config.plot_metrics = ("train/loss",)
          config.summarize = False
          return config
        """))
  return path


def initialized(construct, seed: int = 0):
  """`construct(rngs)` with its initialisers compiled as one program, as create_model builds
  (registry.initialize): eagerly, every parameter shape compiles its own initialiser, seconds of
  CPU for even a small model. The same draw as the eager build, to rounding."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from cnn_jax.models import registry  # pylint: disable=import-outside-toplevel
  return registry.initialize(construct, nnx.Rngs(seed))

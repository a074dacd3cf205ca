"""Helpers shared by tests: load a repo config, run the CLI, fill a model, and the runs that
several test files make."""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import json
import os
import socket
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
  from cnn_jax import cli  # pylint: disable=import-outside-toplevel
  module = cli.load_module(os.path.join(REPO_ROOT, "configs", f"{name}.py"))
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


def normal(seed: int, shape, dtype=None):
  """A standard-normal array drawn in NumPy, for a test's inputs: an eager `jax.random.normal`
  compiles its threefry hash for each new shape at XLA:CPU's full optimisation, which takes
  seconds for a shape of several axes (jaxlib 0.10.2), where this compiles nothing. `dtype`:
  float32 unless given."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  values = np.random.default_rng(seed).standard_normal(tuple(shape), dtype=np.float32)
  return jnp.asarray(values, jnp.float32 if dtype is None else dtype)


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


def initialized(construct, seed: int = 0, **streams: int):
  """`construct(rngs)` with its initialisers compiled as one program, as create_model builds
  (registry.initialize): eagerly, every parameter shape compiles its own initialiser, seconds of
  CPU for even a small model. The same draw as the eager build, to rounding. `streams`: more
  RNG streams' seeds (dropout=1)."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from cnn_jax.models import registry  # pylint: disable=import-outside-toplevel
  return registry.initialize(construct, nnx.Rngs(seed, **streams))


# ------------------------------------------------------------------ runs shared by test files

# The 8-device LeNet-5 run several tests make (test_train, test_training_at_scale), one compiled
# train step between them (the schedule's length is in the program; the session's compilation
# cache holds it once): tests that need fewer steps stop early with `halt_after_steps`. Where
# the number of devices is not what a test checks, it runs on one, as `make train` does on a
# CPU: 8 fake devices on 2 cores cost each step several times its one-device time.
SHARED_8_DEVICE_RUN = {"total_steps": 12, "schedule.warmup_epochs": 0.2}
ONE_DEVICE = {"mesh.num_devices": 1}
DIGITS = "configs/lenet5_digits.py"


def read_jsonl(path) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f]


def losses(workdir) -> list[float]:
  """The train losses a run logged, in order."""
  return [r["train/loss"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))
          if "train/loss" in r]


def cut_short(checkpoint_dir) -> None:
  """A checkpoint's array files cut to 10 bytes, as a copy cut off or a disk fault leaves them."""
  for root, _, names in os.walk(checkpoint_dir):
    for name in names:
      if os.path.basename(root) == "d":
        os.truncate(os.path.join(root, name), 10)


def saved_tree(path) -> dict:
  """The whole tree of a saved checkpoint item (CHECKPOINTS/STEP/default) as NumPy arrays: a
  run of another process or device layout than the test's may have written it, so nothing is
  placed on a device."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  checkpointer = ocp.PyTreeCheckpointer()
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                          checkpointer.metadata(str(path)).item_metadata.tree)
  return checkpointer.restore(str(path), restore_args=as_numpy)


def final_params(workdir):
  """(step, {path: array}) of the newest checkpoint's parameters, as NumPy arrays."""
  import jax  # pylint: disable=import-outside-toplevel
  ckpt_dir = os.path.join(workdir, "checkpoints")
  step = max(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
  flat = jax.tree_util.tree_flatten_with_path(
      saved_tree(os.path.join(ckpt_dir, str(step), "default"))["params"])[0]
  return step, {jax.tree_util.keystr(k): v for k, v in flat}


def free_port() -> int:
  """A free localhost port, for a jax.distributed coordinator."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


# Plain nets and ViTs start slower (no shortcuts / no convolutional prior): more steps.
# The roadmap step needs 100 (LEARNING_MODEL_OPTIONS says why), AlexNet's smaller steps 200.
LEARNING_STEPS = {"plain20": 150, "vit_tiny_patch4_32": 300, "alexnet": 200,
                  "convnext_roadmap": 100}
# ConvNeXt V2 with one block per stage (every kind of layer, 1.4 M parameters instead of 3.4 M):
# each block costs seconds of compile and step time on CPU. Atto at full depth learns digits in
# test_models_convnext.
# The roadmap step at the width of the roadmap's own small-scale runs
# (configs/convnext_roadmap_digits.py), as at full width its steps cost seconds each, and it
# needs 100 of them. Its LayerScale (1e-6) starts every block switched off, and ConvNeXt's
# std-0.02 initialisation puts its BatchNorms' input variances far below the running variance's
# initial 1, which loses only a tenth per step (momentum 0.9): evaluated sooner, it scales every
# feature to about 0 and answers one class for all images.
# ViT-Ti's width and heads with 3 of its 12 blocks: the number of steps, not the depth, is what
# limits a short run (LEARNING_RECIPES), and 3 blocks make 300 steps affordable.
# AlexNet without dropout: it drowns the little signal that reaches the head early on
# (LEARNING_RECIPES) in noise, and a 200-step run has nothing to regularise.
LEARNING_MODEL_OPTIONS = {
    "convnextv2_atto": {"model.depths": (1, 1, 1, 1)},
    "convnext_roadmap": {"model.width": 0.125},
    "vit_tiny_patch4_32": {"model.depth": 3},
    "alexnet": {"model.dropout": 0.0},
}
# Optimizer and data settings for the families the zoo's recipe does not fit in a short run.
LEARNING_RECIPES = {
    # No normalisation in 8 layers, and torchvision's initialisation shrinks the signal at each,
    # so at first the logits hardly depend on the image: Adam steps a tenth of the zoo's size
    # learn from that faint signal where larger ones stall, and batch 64 steadies its gradient.
    "alexnet": {"optimizer.learning_rate": 2e-4, "data.batch_size": 64},
    # Position embeddings start ~50x smaller than the patch embeddings, and Adam grows them by
    # about lr a step, so a ViT begins close to a bag of patches and must learn where each lies:
    # the +-2 px random shifts blur exactly that (a convolution's features just shift along),
    # batch 64 steadies the steps, and a warm-up of ~45 steps keeps the first full-size ones
    # from derailing the run.
    "vit_tiny_patch4_32": {"data.max_shift": 0, "data.batch_size": 64,
                           "schedule.warmup_epochs": 0.6},
}


def learning_run_config(model_name: str, **overrides) -> ml_collections.ConfigDict:
  """test_zoo_training's learning run for `model_name`. test_train's BatchNorm check stops this
  resnet20 run after 2 steps: the same compiled steps, from the session's compilation cache."""
  steps = LEARNING_STEPS.get(model_name, 40)
  # One device: the loop and the learning are what is checked here (the sharded path is
  # tests/test_training_at_scale's), and 8 fake devices on 2 cores cost far more CPU time.
  # Batch 32: the losses still fall well past the bound in 40 steps, at half the step time.
  # 300 test images in one eval batch, not 1,000 in five: accuracy is checked against 0.3
  # (chance 0.1), which 300 images tell as well.
  config = load_config("zoo_digits", model_name, **{
      "total_steps": steps, "log_every_steps": 10, "eval_every_steps": steps,
      "data.batch_size": 32, "data.num_test": 300, "data.eval_batch_size": 300,
      "schedule.warmup_epochs": 0.1, "mesh.num_devices": 1,
      **LEARNING_MODEL_OPTIONS.get(model_name, {}), **LEARNING_RECIPES.get(model_name, {}),
      **overrides})
  if model_name == "convnext_roadmap":
    config.model.step = 4  # ResNeXt-ified inverted bottleneck, BatchNorm: a mid-roadmap model
  return config


# Tiny runs of LeNet-5 on the 8x8 digits (test_sweep, test_launch): a few steps each, checkpoint
# every 2 steps.
TINY_SWEEP_OVERRIDES = [
    ("total_steps", 4), ("log_every_steps", 1), ("eval_every_steps", 4),
    ("checkpoint.every_steps", 2), ("schedule.warmup_epochs", 0.0), ("data.batch_size", 32),
    ("data.eval_batch_size", 304), ("data.num_test", 300), ("mesh.num_devices", 1)]


def make_sweep(**fields) -> ml_collections.ConfigDict:
  """A sweep config of two tiny LeNet-5 runs (two learning rates), `fields` replaced."""
  config = ml_collections.ConfigDict()
  config.name = "test sweep"
  config.base_config = DIGITS
  config.base_config_arg = ""
  config.workdir = "unused"
  config.overrides = list(TINY_SWEEP_OVERRIDES)
  config.points = []
  config.grid = [("optimizer.learning_rate", (0.003, 0.01))]
  config.plot_metrics = ("train/loss", "eval/error")
  config.summarize = True
  for key, value in fields.items():
    config[key] = value
  return config

"""The PyTorch half of `python -m cnn_jax.bench --vs_torch`: the same model in PyTorch eager.

Two sides in one file. The worker (`create_model`, `main`) runs as
`PYTHON cnn_jax/bench_torch.py --serve --model ...` in the Python of `--torch_python`, which may
have torch but neither jax nor cnn_jax: it imports only the standard library, its siblings
timing.py and errors.py (standard library only) and torch; timm (torchvision for the names
timm lacks) for the models it does not define itself (`small_models`: LeNet-5, CIFAR ResNets). With `--serve` it builds the model, prints {"ready": ...} and then times steps on
request ("train 1" on stdin -> {"times": [...]}); without it, it times `--modes` once and prints
{"results": {mode: figures}}; on failure, {"error": "..."}.
The client (`check_torch`, `TorchWorker`, `paired_times`, `compare`) runs in the JAX process,
starts the worker and alternates its steps with JAX's; it needs no jax either.

The train step is what cnn_jax's `train.train_step` does: forward, cross-entropy, backward and
an AdamW update (weight decay 0, as the benchmark's config); inference is an eval-mode forward
under `torch.inference_mode()`. Both with PyTorch's default thread count and, on a CPU, its
default memory format (NCHW contiguous); on a GPU channels-last, as NVIDIA's and timm's GPU
recipes train: PyTorch as people run it. bfloat16/float16 use CPU/GPU autocast, the PyTorch
counterpart of a compute dtype with float32 parameters.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

if __package__:  # imported as cnn_jax.bench_torch
  from cnn_jax.errors import UserError
  from cnn_jax.timing import step_time_stats
else:  # run as a script, maybe by a Python without cnn_jax: its directory is sys.path[0]
  from errors import UserError
  from timing import step_time_stats


# ----------------------------------------------------------------------------- worker side

def small_models() -> dict[str, Callable[[int, int, int], Any]]:
  """{name: constructor(num_classes, in_channels, image_size)}: PyTorch definitions of the small
  cnn_jax models that timm and torchvision lack, layer for layer and with the same parameter
  count (tests/test_bench_torch_models.py): LeNet-5 (ReLU, max pooling, as cnn_jax's default),
  the CIFAR ResNets with option-A shortcuts (akamaster/pytorch_resnet_cifar10) and their plain
  twins, and the long-range experiment's models under its names (configs/longrange.py:
  resnet_micro, convnext_micro_bn, hybrid_micro_bn for its hybrid_micro with norm="bn",
  vit_micro; the ViT and the hybrid's attention blocks are timm's)."""
  import torch
  from torch import nn
  import torch.nn.functional as F

  class LeNet5(nn.Module):
    def __init__(self, num_classes: int, in_channels: int):
      super().__init__()
      self.c1 = nn.Conv2d(in_channels, 6, 5)
      self.c3 = nn.Conv2d(6, 16, 5)
      self.c5 = nn.LazyLinear(120)  # 16 x 5 x 5 at 32 px, 16 x 4 x 4 at 28 px
      self.f6 = nn.Linear(120, 84)
      self.head = nn.Linear(84, num_classes)

    def forward(self, x):
      x = F.max_pool2d(F.relu(self.c1(x)), 2)
      x = F.max_pool2d(F.relu(self.c3(x)), 2)
      x = F.relu(self.c5(torch.flatten(x, 1)))
      return self.head(F.relu(self.f6(x)))

  class BasicBlock(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int, residual: bool):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(planes)
      self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(planes)
      self.residual, self.stride = residual, stride
      self.pad = (planes - cin) // 2, planes - cin - (planes - cin) // 2

    def forward(self, x):
      out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
      if not self.residual:
        return F.relu(out)
      identity = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
      if any(self.pad):  # option A: zero-pad the new channels
        identity = F.pad(identity, (0, 0, 0, 0, *self.pad))
      return F.relu(out + identity)

  class CifarResNet(nn.Module):
    def __init__(self, n: int, residual: bool, num_classes: int, in_channels: int):
      super().__init__()
      self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(16)
      blocks, cin = [], 16
      for i, width in enumerate((16, 32, 64)):
        for j in range(n):
          blocks.append(BasicBlock(cin, width, 2 if i > 0 and j == 0 else 1, residual))
          cin = width
      self.blocks = nn.Sequential(*blocks)
      self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
      x = self.blocks(F.relu(self.bn1(self.conv1(x))))
      return self.fc(torch.mean(x, dim=(2, 3)))

  # The long-range experiment's models (configs/longrange.py), with BatchNorm wherever cnn_jax
  # puts its norm="bn" (a conv directly before a BN has no bias).
  class GRN(nn.Module):  # ConvNeXt V2's Global Response Norm, channels first (timm's)
    def __init__(self, dim: int):
      super().__init__()
      self.gamma = nn.Parameter(torch.zeros(1, dim, 1, 1))
      self.beta = nn.Parameter(torch.zeros(1, dim, 1, 1))

    def forward(self, x):
      gx = torch.linalg.vector_norm(x, dim=(2, 3), keepdim=True)
      return self.gamma * (x * (gx / (gx.mean(dim=1, keepdim=True) + 1e-6))) + self.beta + x

  class ConvNeXtV2BNBlock(nn.Module):
    def __init__(self, dim: int):
      super().__init__()
      self.conv_dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim, bias=False)
      self.norm = nn.BatchNorm2d(dim)
      self.fc1 = nn.Conv2d(dim, 4 * dim, 1)  # timm's conv_mlp form of the atto-nano models
      self.grn = GRN(4 * dim)
      self.fc2 = nn.Conv2d(4 * dim, dim, 1)

    def forward(self, x):
      return x + self.fc2(self.grn(F.gelu(self.fc1(self.norm(self.conv_dw(x))))))

  def downsample(cin: int, cout: int):
    return nn.Sequential(nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 2, 2))

  class AttentionStage(nn.Module):  # cnn_jax.models.hybrid.AttentionStage
    def __init__(self, cin: int, dim: int, depth: int, side: int):
      from timm.models.vision_transformer import Block
      super().__init__()
      self.downsample = downsample(cin, dim)
      self.pos_embed = nn.Parameter(torch.zeros(1, side * side, dim))
      norm = functools.partial(nn.LayerNorm, eps=1e-6)
      self.blocks = nn.Sequential(*[Block(dim, dim // 32, qkv_bias=True, norm_layer=norm)
                                    for _ in range(depth)])

    def forward(self, x):
      x = self.downsample(x)
      n, c, h, w = x.shape
      tokens = self.blocks(x.flatten(2).transpose(1, 2) + self.pos_embed)
      return tokens.transpose(1, 2).reshape(n, c, h, w)

  class MicroConvNeXtBN(nn.Module):
    """convnext_micro_bn (attention=False) and hybrid_micro with norm="bn" (attention=True):
    dims 16/32/64/128, depths 2/2/6/2 resp. 2/2/6/1, 4x4 patchify stem."""

    def __init__(self, attention: bool, num_classes: int, in_channels: int, image_size: int):
      super().__init__()
      dims, depths = (16, 32, 64, 128), (2, 2, 6, 1) if attention else (2, 2, 6, 2)
      self.stem = nn.Sequential(nn.Conv2d(in_channels, dims[0], 4, 4, bias=False),
                                nn.BatchNorm2d(dims[0]))
      stages, cin = [], dims[0]
      for i, (dim, depth) in enumerate(zip(dims, depths)):
        if attention and i >= 2:
          stages.append(AttentionStage(cin, dim, depth, image_size // (4 * 2 ** i)))
        else:
          stages.append(nn.Sequential(*([downsample(cin, dim)] if i else []),
                                      *[ConvNeXtV2BNBlock(dim) for _ in range(depth)]))
        cin = dim
      self.stages = nn.Sequential(*stages)
      # cnn_jax's ConvNeXt head norm is the model's norm; the hybrid's is always LayerNorm.
      self.head_norm = nn.LayerNorm(cin, eps=1e-6) if attention else nn.BatchNorm1d(cin)
      self.head = nn.Linear(cin, num_classes)

    def forward(self, x):
      return self.head(self.head_norm(self.stages(self.stem(x)).mean(dim=(2, 3))))

  class Bottleneck(nn.Module):
    """ConvNeXt roadmap step 0's block: torchvision's ResNet-50 bottleneck plus LayerScale."""

    def __init__(self, cin: int, dim: int, stride: int):
      super().__init__()
      hidden = dim // 4
      self.body = nn.Sequential(
          nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
          nn.Conv2d(hidden, hidden, 3, stride, 1, bias=False), nn.BatchNorm2d(hidden),
          nn.ReLU(), nn.Conv2d(hidden, dim, 1, bias=False), nn.BatchNorm2d(dim))
      self.gamma = nn.Parameter(torch.full((1, dim, 1, 1), 1e-6))
      self.shortcut = (nn.Sequential(nn.Conv2d(cin, dim, 1, stride, bias=False),
                                     nn.BatchNorm2d(dim))
                       if stride != 1 or cin != dim else nn.Identity())

    def forward(self, x):
      return F.relu(self.body(x) * self.gamma + self.shortcut(x))

  class ResNetMicro(nn.Module):
    """resnet_micro: roadmap step 0 narrowed to dims 64/128/256/512, stem 16, one block each."""

    def __init__(self, num_classes: int, in_channels: int):
      super().__init__()
      self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 7, 2, 3, bias=False),
                                nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
      blocks, cin = [], 16
      for i, dim in enumerate((64, 128, 256, 512)):
        blocks.append(Bottleneck(cin, dim, 2 if i else 1))
        cin = dim
      self.blocks = nn.Sequential(*blocks)
      self.head = nn.Linear(cin, num_classes)

    def forward(self, x):
      return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))

  def vit_micro(num_classes: int, in_channels: int, image_size: int):
    from timm.models.vision_transformer import VisionTransformer  # cnn_jax's vit_micro_patch8_64
    return VisionTransformer(img_size=image_size, patch_size=8, in_chans=in_channels,
                             num_classes=num_classes, embed_dim=96, depth=5, num_heads=3)

  models = {"lenet5": lambda num_classes, in_channels, image_size: LeNet5(num_classes,
                                                                          in_channels)}
  for n in (3, 5, 7, 9, 18):
    depth = 6 * n + 2
    for prefix, residual in (("resnet", True), ("plain", False)):
      models[f"{prefix}{depth}"] = (
          lambda num_classes, in_channels, image_size, n=n, residual=residual:
          CifarResNet(n, residual, num_classes, in_channels))
  models["resnet_micro"] = lambda num_classes, in_channels, image_size: ResNetMicro(
      num_classes, in_channels)
  models["convnext_micro_bn"] = functools.partial(MicroConvNeXtBN, False)
  # Not "hybrid_micro": cnn_jax's registered hybrid_micro has LayerNorm unless norm="bn".
  models["hybrid_micro_bn"] = functools.partial(MicroConvNeXtBN, True)
  models["vit_micro"] = vit_micro
  return models


def create_model(name: str, num_classes: int, in_channels: int, image_size: int,
                 options: dict[str, Any] | None = None) -> tuple[Any, str]:
  """(model, source): this file's definition for the small models (`small_models`), else
  timm's model of this name, else torchvision's. `options`: further keyword arguments of
  timm's `create_model` (e.g. patch_size for ConvNeXt)."""
  import torch
  from torch import nn

  small = small_models()
  options = dict(options or {})
  if name in small:
    if options:
      raise ValueError(f"{name!r} is defined in bench_torch.py and takes no options "
                       f"(got {options})")
    model = small[name](num_classes, in_channels, image_size)
    with torch.no_grad():  # materialises LazyLinear's input size (eval: BN takes 1 image)
      model.eval()(torch.zeros(1, in_channels, image_size, image_size))
    return model, f"cnn_jax/bench_torch.py (torch {torch.__version__})"
  import timm

  if name in timm.list_models():
    kwargs = {"num_classes": num_classes, "in_chans": in_channels, **options}
    if name.startswith(("vit", "deit")):
      kwargs["img_size"] = image_size
    model = timm.create_model(name, pretrained=False, **kwargs)
    source = f"timm {timm.__version__}"
    stage0 = getattr(getattr(model, "stages", [None])[0], "downsample", None)
    if name.startswith("convnext") and stage0 is not None and not isinstance(stage0, nn.Identity):
      # timm keeps a total stride of 32 at patch_size 2 by downsampling in stage 0; cnn_jax's
      # patch_size, as the ConvNeXt V2 CIFAR recipes, only changes the stem.
      model.stages[0].downsample = nn.Identity()
      source += ", stage 0 without its downsampling (cnn_jax's patch_size)"
    return model, source
  try:
    import torchvision
    if in_channels == 3 and name in torchvision.models.list_models():
      return (torchvision.models.get_model(name, weights=None, num_classes=num_classes,
                                           **options),
              f"torchvision {torchvision.__version__}")
  except ImportError:
    pass
  raise ValueError(f"no timm or torchvision model named {name!r} (with {in_channels} input "
                   "channels) to compare with")


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", required=True)
  parser.add_argument("--modes", default="train,infer")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--in_channels", type=int, default=3)
  parser.add_argument("--num_classes", type=int, default=1000)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
  parser.add_argument("--options", default="{}",
                      help="JSON object: further keyword arguments of timm's create_model.")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--serve", action="store_true",
                      help="Answer 'MODE COUNT' lines on stdin with the times of COUNT steps.")
  args = parser.parse_args(argv)
  try:
    import torch
    import torch.nn.functional as F
  except ImportError as e:
    print(json.dumps({"error": f"cannot import torch: {e}"}), flush=True)
    return 3
  try:
    model, source = create_model(args.model, args.num_classes, args.in_channels,
                                 args.image_size, json.loads(args.options))
  except (ImportError, ValueError, TypeError) as e:
    print(json.dumps({"error": str(e)}), flush=True)
    return 3

  device = "cuda" if torch.cuda.is_available() else "cpu"
  # cuDNN's tensor-core convs take NHWC; NCHW would add a transpose around every conv.
  memory_format = torch.channels_last if device == "cuda" else torch.contiguous_format
  model = model.to(device, memory_format=memory_format)
  generator = torch.Generator().manual_seed(0)
  images = torch.randn(args.batch_size, args.in_channels, args.image_size, args.image_size,
                       generator=generator).to(device, memory_format=memory_format)
  labels = torch.randint(0, args.num_classes, (args.batch_size,), generator=generator).to(device)
  autocast = (contextlib.nullcontext() if args.dtype == "float32" else
              torch.autocast(device_type=device, dtype=getattr(torch, args.dtype)))
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)

  def train_step():
    with autocast:
      loss = F.cross_entropy(model(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss

  def infer_step():
    with torch.inference_mode(), autocast:
      return model(images)

  def sync():
    if device == "cuda":
      torch.cuda.synchronize()

  def run_steps(mode: str, count: int) -> list[float]:
    if mode == "train":
      model.train()
      step = train_step
    elif mode == "infer":
      model.eval()
      step = infer_step
    else:
      raise ValueError(f"unknown mode {mode!r}")
    times = []
    for _ in range(count):
      start = time.perf_counter()
      step()
      sync()
      times.append(time.perf_counter() - start)
    return times

  meta = {"framework": "torch", "source": source, "model": args.model,
          "batch_size": args.batch_size, "image_size": args.image_size, "dtype": args.dtype,
          "device": device, "memory_format": str(memory_format).removeprefix("torch."),
          "torch_version": torch.__version__,
          "threads": torch.get_num_threads()}
  if args.serve:
    # One request per line, "MODE COUNT"; one JSON reply per line. The caller alternates
    # these with its own steps, so both frameworks see the same machine load.
    print(json.dumps({"ready": meta}), flush=True)
    for line in sys.stdin:
      words = line.split()
      if not words or words[0] == "quit":
        break
      try:
        reply = {"times": run_steps(words[0], int(words[1]))}
      except (ValueError, IndexError) as e:
        reply = {"error": f"bad request {line.strip()!r}: {e}"}
      print(json.dumps(reply), flush=True)
    return 0

  results = {}
  for mode in args.modes.split(","):
    try:
      run_steps(mode, args.warmup)
      times = run_steps(mode, args.steps)
    except ValueError as e:
      print(json.dumps({"error": str(e)}), flush=True)
      return 3
    stats = step_time_stats(times)
    results[mode] = {
        **meta, "mode": mode, "images_per_sec": args.batch_size / stats["median"],
        "step_time_s": stats, "step_times_s": times,
        "host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_device_bytes": (torch.cuda.max_memory_allocated() if device == "cuda" else None),
    }
  print(json.dumps({"results": results}), flush=True)
  return 0


# ----------------------------------------------------------------------------- client side

TORCH_INSTALL = "pip install torch==2.14.1 torchvision==0.29.1 timm==1.0.31"
# Idle time before each turn once the other framework has run: their thread pools spin for a
# moment after their work ends, and that must not land in the next step's time.
_SETTLE_S = 0.2
# Timed steps per turn. Each turn first runs untimed steps for at least `_TURN_WARM_S` (one at
# least): the first steps after the other framework's turn run markedly slower than back-to-back
# steps, a long step the first one (likely the VM reclaiming memory freed at the end of a
# step), a short one its first few (presumably while XLA:CPU's worker thread wakes)
# (experiments/cpu_speed/README.md, experiments/cpu_speed/turn_profile.py). A training loop
# never waits between steps, so those steps are not what users get.
_TURN_STEPS = 2
_TURN_WARM_S = 0.1
_MOST_UNTIMED = 50


def _untimed_steps(seen: list[float]) -> int:
  """Untimed steps that open a turn: enough to fill `_TURN_WARM_S` at the median step time
  `seen` so far (each framework's own), at least one."""
  if not seen:
    return 1
  return max(1, min(_MOST_UNTIMED,
                    math.ceil(_TURN_WARM_S / max(statistics.median(seen), 1e-9))))


def check_torch(torch_python: str | None) -> str:
  """The Python to run the worker with; UserError (how to install) if it lacks torch."""
  python = torch_python or sys.executable
  try:
    # torch alone: small_models() needs no timm, and the worker reports a missing timm.
    probe = subprocess.run([python, "-c", "import torch"], capture_output=True)
  except OSError as e:
    raise UserError(f"--torch_python={python!r} cannot be run: {e.strerror or e}") from None
  if probe.returncode:
    raise UserError(f"--vs_torch needs PyTorch and timm in {python} (an optional extra: "
                    f"{TORCH_INSTALL}, or pass --torch_python=A_PYTHON_WITH_TORCH)")
  return python


class TorchWorker:
  """This file run with `--serve` in a second process: times PyTorch steps on request."""

  def __init__(self, python: str, model_name: str, *, batch_size: int, image_size: int,
               in_channels: int, num_classes: int, dtype: str,
               options: dict[str, Any] | None = None):
    self._stderr = tempfile.TemporaryFile(mode="w+")
    self._proc = subprocess.Popen(
        [python, os.path.abspath(__file__), "--serve", "--model", model_name, "--batch_size",
         str(batch_size), "--image_size", str(image_size), "--in_channels", str(in_channels),
         "--num_classes", str(num_classes), "--dtype", dtype, "--options",
         json.dumps(options or {})],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
        bufsize=1)
    self.meta = self._reply()["ready"]

  def _reply(self) -> dict[str, Any]:
    for line in self._proc.stdout:
      if line.startswith("{"):
        out = json.loads(line)
        if "error" in out:
          self.close()
          raise UserError(f"PyTorch side: {out['error']}")
        return out
    self._stderr.seek(0)
    last = (self._stderr.read().strip().splitlines() or ["no output"])[-1]
    self.close()
    raise RuntimeError(f"the PyTorch benchmark process failed: {last}")

  def run_steps(self, mode: str, count: int) -> list[float]:
    self._proc.stdin.write(f"{mode} {count}\n")
    self._proc.stdin.flush()
    return self._reply()["times"]

  def close(self) -> None:
    if self._proc.poll() is None:
      try:
        self._proc.stdin.write("quit\n")
        self._proc.stdin.flush()
        self._proc.wait(timeout=60)
      except (OSError, subprocess.TimeoutExpired):
        self._proc.kill()
    self._stderr.close()


def paired_times(time_jax: Callable[[int], list[float]], worker: TorchWorker, mode: str,
                 steps: int, warmup: int
                 ) -> tuple[list[float], list[float], list[float], list[float]]:
  """Alternates turns of the two frameworks, each turn untimed steps (`_untimed_steps`) and up
  to `_TURN_STEPS` timed ones, until each has `steps` timed steps: (jax warm-up, jax, torch
  warm-up, torch). `time_jax(n)` runs n JAX steps and returns their times."""
  jax_warm = time_jax(warmup)
  torch_warm = worker.run_steps(mode, warmup) if warmup else []
  jax_seen, torch_seen = list(jax_warm), list(torch_warm)
  jax_times, torch_times = [], []
  while len(jax_times) < steps:
    count = min(_TURN_STEPS, steps - len(jax_times))
    for seen, timed, run in ((jax_seen, jax_times, time_jax),
                             (torch_seen, torch_times,
                              functools.partial(worker.run_steps, mode))):
      untimed = _untimed_steps(seen)
      time.sleep(_SETTLE_S)
      turn = run(untimed + count)
      seen += turn
      timed += turn[untimed:]
  return jax_warm, jax_times, torch_warm, torch_times


def torch_result(meta: dict[str, Any], mode: str, warm_times: list[float],
                 times: list[float]) -> dict[str, Any]:
  """The worker's figures for one mode of a paired run."""
  stats = step_time_stats(times)
  return {**meta, "mode": mode, "steps": len(times), "warmup": len(warm_times),
          "images_per_sec": meta["batch_size"] / stats["median"], "step_time_s": stats,
          "step_times_s": times, "warmup_times_s": warm_times}


def compare(prepare: Callable[..., Any], python: str, model_name: str, steps: int,
            warmup: int, options: dict[str, Any] | None = None) -> dict[str, Any]:
  """Train and infer in both frameworks, in turns (`paired_times`), so that a change in the
  machine's load hits both alike. `prepare(mode=...)` builds the JAX step: an object with
  `fields` (its sizes), `time_steps(n)` and `result(warm_times, times)` (cnn_jax.bench's
  PreparedStep). `model_name` and `options` choose the PyTorch model (`create_model`).
  Returns bench's report without its "host"."""
  if steps < 1 or warmup < 0:
    raise UserError(f"need steps >= 1 and warmup >= 0 (got {steps}, {warmup})")
  step = prepare(mode="train")
  worker = TorchWorker(python, model_name, **{
      k: step.fields[k] for k in ("batch_size", "image_size", "in_channels", "num_classes",
                                  "dtype")}, options=options)
  report: dict[str, Any] = {"jax": [], "torch": {}, "ratio_vs_torch": {},
                            "ratio_vs_torch_per_pair": {}}
  try:
    for mode in ("train", "infer"):
      step = step or prepare(mode=mode)
      jax_warm, jax_times, torch_warm, torch_times = paired_times(
          step.time_steps, worker, mode, steps, warmup)
      jax_result = step.result(jax_warm, jax_times)
      torch_figures = torch_result(worker.meta, mode, torch_warm, torch_times)
      report["jax"].append(jax_result)
      report["torch"][mode] = torch_figures
      report["ratio_vs_torch"][mode] = (torch_figures["step_time_s"]["median"]
                                        / jax_result["step_time_s"]["median"])
      report["ratio_vs_torch_per_pair"][mode] = step_time_stats(
          [t / j for t, j in zip(torch_times, jax_times)])
      step = None  # One mode at a time: only one model state and program occupy memory.
  finally:
    worker.close()
  return report


def report_lines(report: dict[str, Any]) -> list[str]:
  """The PyTorch figures and ratios of a `compare` report, for bench's printed table."""
  lines = []
  for mode, r in (report.get("torch") or {}).items():
    t = r["step_time_s"]
    lines.append(f"PyTorch {r['source']} {mode}: median {t['median'] * 1e3:.1f} ms (p10 "
                 f"{t['p10'] * 1e3:.1f}, p90 {t['p90'] * 1e3:.1f}), {r['images_per_sec']:.1f} "
                 f"images/s; torch {r['torch_version']}, {r['threads']} threads")
  for mode, ratio in (report.get("ratio_vs_torch") or {}).items():
    pairs = report["ratio_vs_torch_per_pair"][mode]
    lines.append(f"ratio {mode}: {ratio:.2f}x  (PyTorch median step time / cnn_jax median step "
                 f"time, > 1 = cnn_jax faster; per alternating pair p10 {pairs['p10']:.2f}, "
                 f"median {pairs['median']:.2f}, p90 {pairs['p90']:.2f})")
  return lines


if __name__ == "__main__":
  sys.exit(main())

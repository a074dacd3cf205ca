"""The PyTorch half of `python -m cnn_jax.bench --vs_torch`: the same model in PyTorch eager.

Started by cnn_jax/bench.py as `PYTHON cnn_jax/bench_torch.py --model ... --modes train,infer`
with the Python of `--torch_python`, so it imports nothing from JAX and, of cnn_jax, only its
sibling timing.py (standard library only); besides that, torch and timm (torchvision for the
names timm lacks). It prints one JSON line: {"results": {mode: figures}} or {"error": "..."}.
With `--serve` it builds the model, prints {"ready": ...} and then times steps on request
("train 1" on stdin -> {"times": [...]}), which lets the JAX side alternate single steps of the
two frameworks.

The train step is what cnn_jax's `train.train_step` does: forward, cross-entropy, backward and
an AdamW update (weight decay 0, as the benchmark's config); inference is an eval-mode forward
under `torch.inference_mode()`. Both in the default memory format (NCHW contiguous) and with
PyTorch's default thread count: PyTorch as people run it. bfloat16/float16 use CPU/GPU autocast,
the PyTorch counterpart of a compute dtype with float32 parameters.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import time

if __package__:  # imported as cnn_jax.bench_torch
  from cnn_jax.timing import step_time_stats
else:  # run as a script, maybe by a Python without cnn_jax: its directory is sys.path[0]
  from timing import step_time_stats


def create_model(name: str, num_classes: int, in_channels: int, image_size: int):
  """(model, source): timm's model of this name, else torchvision's."""
  import timm

  if name in timm.list_models():
    kwargs = {"num_classes": num_classes, "in_chans": in_channels}
    if name.startswith(("vit", "deit")):
      kwargs["img_size"] = image_size
    return timm.create_model(name, pretrained=False, **kwargs), f"timm {timm.__version__}"
  try:
    import torchvision
    if in_channels == 3 and name in torchvision.models.list_models():
      return (torchvision.models.get_model(name, weights=None, num_classes=num_classes),
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
                                 args.image_size)
  except (ImportError, ValueError) as e:
    print(json.dumps({"error": str(e)}), flush=True)
    return 3

  device = "cuda" if torch.cuda.is_available() else "cpu"
  model = model.to(device)
  generator = torch.Generator().manual_seed(0)
  images = torch.randn(args.batch_size, args.in_channels, args.image_size, args.image_size,
                       generator=generator).to(device)
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
          "device": device, "torch_version": torch.__version__,
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


if __name__ == "__main__":
  sys.exit(main())

"""Imports PyTorch weights (torchvision, timm, official ConvNeXt-V2) into cnn_jax models.

    python -m cnn_jax.convert --model convnextv2_tiny --checkpoint FILE --out DIR

FILE is a `.safetensors` file (read with the safetensors package; no torch needed) or a
`.pth`/`.pt` file (read with `torch.load(weights_only=True)`: torch is an optional extra, and
nothing but tensors and plain containers is ever unpickled). DIR becomes a cnn_jax pretrained
checkpoint: an Orbax checkpoint of the parameters (and BatchNorm statistics) under
`DIR/weights` plus `DIR/pretrained.json`, which any config loads with `--config.init_from=DIR`
(`cnn_jax.checkpoint.load_pretrained`).

Sources, chosen by the model's family and, for ConvNeXt, by the checkpoint's key names:

* ResNet-18..152: torchvision (`conv1`, `bn1`, `layerN.i.*`, `downsample.0/1`, `fc`); timm's
  ResNets use the same names.
* AlexNet: torchvision (`features.{0,3,6,8,10}`, `classifier.{1,4,6}`).
* ViT (`vit_*_patch16_224`): timm `VisionTransformer`.
* ConvNeXt V1/V2: timm (`stem.0`, `stages.i.blocks.j.mlp.fc1`, ...; 1x1-conv MLPs of the
  `conv_mlp` variants included), the official repositories' fine-tuned checkpoints
  (`downsample_layers`, `stages.i.j.pwconv1`, GRN `gamma` of shape 1x1x1xC) and FCMAE
  pre-training checkpoints (`encoder.*` with MinkowskiEngine layouts; the decoder is dropped and
  the result has no head, so load it with `--config.init_head=drop`).

Every model weight must come from exactly one checkpoint tensor of the right shape, and every
checkpoint tensor must be used (BatchNorm's `num_batches_tracked` and the FCMAE decoder
excepted); anything else is an error naming the key and both shapes (torch layout), and nothing
is written.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable
from typing import Any

import numpy as np
from absl import flags

from cnn_jax import checkpoint, cli
from cnn_jax.errors import UserError

Path = tuple[str | int, ...]


# ------------------------------------------------------------------------------ reading


def _torch_or_fail():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise UserError(
        "reading .pth/.pt checkpoints needs PyTorch, an optional extra: "
        "pip install torch --index-url https://download.pytorch.org/whl/cpu "
        "(or convert the file to .safetensors elsewhere)") from None
  return torch


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors import SafetensorError, safe_open  # pylint: disable=import-outside-toplevel
  try:
    # The flax framework reads bfloat16 too, which the numpy one cannot.
    with safe_open(path, framework="flax") as f:
      return {key: np.asarray(f.get_tensor(key), np.float32) for key in f.keys()}
  except (SafetensorError, OSError, ValueError) as e:
    raise UserError(f"{path} is not a readable safetensors checkpoint: "
                    f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _read_torch(path: str) -> dict[str, np.ndarray]:
  torch = _torch_or_fail()
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pickle, zip and torch errors: all mean "not a weights-only checkpoint"
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise UserError(f"{path} is not a PyTorch checkpoint that loads with weights_only=True: "
                    f"{first}") from None
  if isinstance(obj, dict):
    for wrapper in ("model", "state_dict", "model_state_dict"):
      if isinstance(obj.get(wrapper), dict):
        obj = obj[wrapper]
        break
  if not isinstance(obj, dict):
    raise UserError(f"{path} holds a {type(obj).__name__}, not a state dict")
  return {key: value.detach().float().numpy() for key, value in obj.items()
          if isinstance(key, str) and isinstance(value, torch.Tensor)}


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """The checkpoint's tensors as float32 numpy arrays, keyed by their PyTorch names.

  Unwraps `{"model": ...}` / `{"state_dict": ...}` containers and DataParallel's `module.`
  prefix."""
  if not os.path.isfile(path):
    raise UserError(f"checkpoint file not found: {path}")
  state = _read_safetensors(path) if path.endswith(".safetensors") else _read_torch(path)
  if not state:
    raise UserError(f"{path} holds no tensors; is it a checkpoint?")
  if all(key.startswith("module.") for key in state):
    state = {key[len("module."):]: value for key, value in state.items()}
  return state


# --------------------------------------------------------------------------- key mapping

_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
               "var": "running_var"}


def _torch_leaf(name: str) -> str:
  return _LEAF_NAMES.get(name, name)


def _dotted(path: Path) -> str:
  return ".".join(str(p) for p in path)


def _resnet_key(path: Path) -> str:
  *module, leaf = path
  key = _dotted(module)
  key = re.sub(r"^stem\.", "", key)
  key = key.replace("downsample.conv", "downsample.0").replace("downsample.bn", "downsample.1")
  return f"{key}.{_torch_leaf(leaf)}"


_ALEXNET = {"conv1": "features.0", "conv2": "features.3", "conv3": "features.6",
            "conv4": "features.8", "conv5": "features.10", "fc6": "classifier.1",
            "fc7": "classifier.4", "fc8": "classifier.6"}


def _alexnet_key(path: Path) -> str:
  module, leaf = path
  return f"{_ALEXNET.get(module, module)}.{_torch_leaf(leaf)}"


def _vit_key(path: Path) -> str:
  if len(path) == 1:  # cls_token, pos_embed: parameters of the model itself.
    return str(path[0])
  *module, leaf = path
  return f"{_dotted(module)}.{_torch_leaf(leaf)}"


def _convnext_timm_key(path: Path) -> str:
  *module, leaf = path
  key = _dotted(module)
  if key.endswith(".grn"):
    return f"{key[:-len('grn')]}mlp.grn.{'weight' if leaf == 'gamma' else 'bias'}"
  key = re.sub(r"^stem\.conv", "stem.0", key)
  key = re.sub(r"^stem\.norm", "stem.1", key)
  key = key.replace("downsample.norm", "downsample.0").replace("downsample.conv", "downsample.1")
  key = re.sub(r"\.(fc[12])$", r".mlp.\1", key)
  return f"{key}.{_torch_leaf(leaf)}" if leaf != "gamma" else f"{key}.gamma"


def _convnext_official_key(path: Path) -> str:
  *module, leaf = path
  key = _dotted(module)
  key = re.sub(r"^stem\.conv", "downsample_layers.0.0", key)
  key = re.sub(r"^stem\.norm", "downsample_layers.0.1", key)
  key = re.sub(r"^stages\.(\d+)\.downsample\.norm", r"downsample_layers.\1.0", key)
  key = re.sub(r"^stages\.(\d+)\.downsample\.conv", r"downsample_layers.\1.1", key)
  key = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)", r"stages.\1.\2", key)
  key = re.sub(r"\.conv_dw$", ".dwconv", key)
  key = re.sub(r"\.fc([12])$", r".pwconv\1", key)
  key = re.sub(r"^head\.norm$", "norm", key)
  key = re.sub(r"^head\.fc$", "head", key)
  if leaf in ("gamma", "beta"):
    return f"{key}.{leaf}"  # GRN gamma/beta and LayerScale gamma keep their names
  return f"{key}.{_torch_leaf(leaf)}"


def _fcmae_to_official(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """FCMAE pre-training checkpoint -> the dense encoder in official fine-tuning names.

  Keeps `encoder.*` only. MinkowskiEngine layers store a conv kernel as (k*k, in, out)
  (depthwise: (k*k, C)) with the spatial offset index running over x (width) slowest, biases as
  (1, C), and wrap LayerNorm / Linear as `.ln` / `.linear`; the official repository's
  `remap_checkpoint_keys` undoes the same (this is an independent numpy version of it).
  """
  out = {}
  for key, value in state.items():
    if not key.startswith("encoder."):
      continue
    key = key[len("encoder."):]
    if key.endswith(".kernel"):
      key = key[:-len(".kernel")] + ".weight"
      if value.ndim == 3:
        kv, cin, cout = value.shape
        k = math.isqrt(kv)
        # value[w * k + h, i, o] -> weight[o, i, h, w]
        value = value.reshape(k, k, cin, cout).transpose(3, 2, 1, 0)
      elif value.ndim == 2:
        kv, dim = value.shape
        k = math.isqrt(kv)
        value = value.reshape(k, k, dim).transpose(2, 1, 0)[:, None]
    else:
      key = re.sub(r"\.(ln|linear)\.", ".", key)
    if key.endswith(".bias") and value.ndim != 1:
      value = value.reshape(-1)
    out[key] = value
  return out


@dataclasses.dataclass(frozen=True)
class Family:
  """How one model family's weights are named in a checkpoint format."""
  source: str                       # Human-readable source format, for pretrained.json.
  key_of: Callable[[Path], str]     # cnn_jax variable path -> checkpoint key
  head: tuple[str, ...]             # cnn_jax paths of the classifier (dropped by init_head=drop)
  head_key: str                     # checkpoint key of the classifier weight (num_classes)


def _family_of(model: Any, state: dict[str, np.ndarray]) -> Family:
  # Imported here: the converter is a tool that sits above the models package.
  from cnn_jax.models import alexnet, convnext, resnet, vit  # pylint: disable=import-outside-toplevel
  if isinstance(model, resnet.ResNet):
    return Family("torchvision ResNet", _resnet_key, ("fc",), "fc.weight")
  if isinstance(model, alexnet.AlexNet):
    return Family("torchvision AlexNet", _alexnet_key, ("fc8",), "classifier.6.weight")
  if isinstance(model, vit.VisionTransformer):
    return Family("timm VisionTransformer", _vit_key, ("head",), "head.weight")
  if isinstance(model, convnext.ConvNeXt):
    if any(key.startswith("downsample_layers.") for key in state):
      return Family("official ConvNeXt", _convnext_official_key, ("head.fc",), "head.weight")
    return Family("timm ConvNeXt", _convnext_timm_key, ("head.fc",), "head.fc.weight")
  raise UserError(f"no weight converter for {type(model).__name__} models; supported: ResNet, "
                  "AlexNet, ConvNeXt V1/V2, ViT")


def _is_ignored(key: str) -> bool:
  return key.endswith("num_batches_tracked")


# ------------------------------------------------------------------------------ conversion


def _torch_shape(leaf: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The PyTorch layout of a cnn_jax array shape (for messages)."""
  if leaf == "kernel" and len(shape) == 4:
    h, w, i, o = shape
    return (o, i, h, w)
  if leaf == "kernel" and len(shape) == 2:
    return (shape[1], shape[0])
  return tuple(shape)


def _to_jax_layout(leaf: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
  """The checkpoint tensor in cnn_jax's layout, or None if it cannot have that shape."""
  if leaf == "kernel" and len(shape) == 4 and value.ndim == 4:
    value = value.transpose(2, 3, 1, 0)      # OIHW -> HWIO (depthwise: (C,1,k,k) -> (k,k,1,C))
  elif leaf == "kernel" and len(shape) == 2:
    if value.ndim == 4 and value.shape[2:] == (1, 1):
      value = value[:, :, 0, 0]              # 1x1 conv used as a Linear (timm conv_mlp)
    if value.ndim == 2:
      value = value.T                        # (out, in) -> (in, out)
  elif value.shape != tuple(shape) and [d for d in value.shape if d != 1] == \
      [d for d in shape if d != 1]:
    value = value.reshape(shape)             # official GRN (1, 1, 1, C) -> (C,)
  return value if value.shape == tuple(shape) else None


@dataclasses.dataclass
class Converted:
  """Converted weights as flat {path: array} dicts in cnn_jax layout."""
  params: dict[Path, np.ndarray]
  batch_stats: dict[Path, np.ndarray]
  source: str
  head: tuple[str, ...]
  has_head: bool
  num_classes: int | None


def _flat_variables(model: Any) -> tuple[dict[Path, Any], dict[Path, Any]]:
  from flax import nnx  # pylint: disable=import-outside-toplevel
  params = {tuple(p): v for p, v in nnx.state(model, nnx.Param).flat_state()}
  stats = {tuple(p): v for p, v in nnx.state(model, nnx.BatchStat).flat_state()}
  return params, stats


def checkpoint_num_classes(model: Any, state: dict[str, np.ndarray]) -> int | None:
  """Classes of the checkpoint's classifier, None when it has none (an FCMAE encoder)."""
  state, _ = _maybe_fcmae(state)
  weight = state.get(_family_of(model, state).head_key)
  return None if weight is None or weight.ndim < 2 else int(weight.shape[0])


def _maybe_fcmae(state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], bool]:
  if any(key.startswith("encoder.") for key in state):
    return _fcmae_to_official(state), True
  return state, False


def _head_path(path: Path, head: tuple[str, ...]) -> bool:
  dotted = _dotted(path)
  return any(dotted == h or dotted.startswith(h + ".") for h in head)


def convert_state_dict(model: Any, state: dict[str, np.ndarray]) -> Converted:
  """Maps a PyTorch state dict onto `model`'s variables (model may be abstract: nnx.eval_shape).

  Raises UserError on a missing or unexpected key or a shape that does not fit.
  """
  state, fcmae = _maybe_fcmae(state)
  family = _family_of(model, state)
  head = ("head",) if fcmae else family.head
  params, stats = _flat_variables(model)
  used: set[str] = set()
  missing: list[str] = []
  mismatched: list[str] = []
  out: dict[str, dict[Path, np.ndarray]] = {"params": {}, "batch_stats": {}}
  for kind, variables in (("params", params), ("batch_stats", stats)):
    for path, variable in variables.items():
      key = family.key_of(path)
      if key not in state:
        if fcmae and _head_path(path, head):
          continue  # An encoder-only checkpoint has no head; init_head=drop initialises it.
        missing.append(key)
        continue
      shape = tuple(variable.shape)
      value = _to_jax_layout(str(path[-1]), state[key], shape)
      used.add(key)
      if value is None:
        mismatched.append(
            f"shape mismatch for checkpoint key {key!r}: the checkpoint has "
            f"{tuple(state[key].shape)}, {type(model).__name__} expects "
            f"{_torch_shape(str(path[-1]), shape)} (cnn_jax {_dotted(path)} {shape})")
        continue
      out[kind][path] = np.ascontiguousarray(value, np.float32)
  unexpected = sorted(k for k in state if k not in used and not _is_ignored(k))
  if missing or unexpected:
    parts = []
    if missing:
      parts.append(f"{len(missing)} missing key(s), e.g. {missing[0]!r}")
    if unexpected:
      parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]!r} "
                   f"{tuple(state[unexpected[0]].shape)}")
    hint = (" (is it a checkpoint of another architecture?)"
            if len(missing) + len(unexpected) > 2 else "")
    raise UserError(f"checkpoint does not match {type(model).__name__} ({family.source} "
                    f"names): {'; '.join(parts)}{hint}")
  if mismatched:
    more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
    raise UserError(mismatched[0] + more)
  weight = state.get(family.head_key)
  return Converted(params=out["params"], batch_stats=out["batch_stats"], source=family.source
                   + (" FCMAE encoder" if fcmae else ""), head=head, has_head=not fcmae,
                   num_classes=None if weight is None else int(weight.shape[0]))


# ------------------------------------------------------------------------------ writing


def save_pretrained(out_dir: str, converted: Converted, *, model_name: str,
                    checkpoint_path: str) -> None:
  """Writes DIR/weights (Orbax) and DIR/pretrained.json, atomically: on failure DIR is absent."""
  meta = {"model": model_name, "num_classes": converted.num_classes,
          "has_head": converted.has_head, "head": list(converted.head),
          "source": converted.source, "checkpoint": os.path.abspath(checkpoint_path)}
  checkpoint.write_pretrained(out_dir, converted.params, converted.batch_stats, meta)


def build_for_checkpoint(model_name: str, state: dict[str, np.ndarray],
                         options: dict[str, Any] | None = None) -> Any:
  """The abstract model `model_name` (with `options`) and the checkpoint's number of classes."""
  from flax import nnx  # pylint: disable=import-outside-toplevel

  from cnn_jax.models import create_model  # pylint: disable=import-outside-toplevel

  options = dict(options or {})
  model = nnx.eval_shape(lambda: create_model(model_name, rngs=nnx.Rngs(0), **options))
  num_classes = checkpoint_num_classes(model, state)
  if num_classes is not None and num_classes != getattr(model, "num_classes", None):
    options["num_classes"] = num_classes
    model = nnx.eval_shape(lambda: create_model(model_name, rngs=nnx.Rngs(0), **options))
  return model


CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def _read_weights(model_name: str, path: str, options: dict[str, Any]
                  ) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]]:
  """(metadata, flat params, flat BatchNorm statistics) of a converted directory or a
  PyTorch checkpoint file (converted here, in memory)."""
  if os.path.isdir(path):
    from cnn_jax import checkpoint  # pylint: disable=import-outside-toplevel
    if not os.path.isfile(os.path.join(path, checkpoint.PRETRAINED_JSON)):
      run = (" (it looks like a training run's WORKDIR: python -m cnn_jax.predict --weights "
             "takes those)" if os.path.isfile(os.path.join(path, "config.json")) else "")
      raise UserError(f"{path} is not a converted checkpoint (no {checkpoint.PRETRAINED_JSON})"
                      f"; write one with python -m cnn_jax.convert{run}")
    return checkpoint.read_pretrained(path)
  if not path.endswith(CHECKPOINT_SUFFIXES):
    raise UserError(f"pretrained={path!r} is neither a directory written by "
                    f"python -m cnn_jax.convert nor a checkpoint file "
                    f"({', '.join(CHECKPOINT_SUFFIXES)})")
  state = read_state_dict(path)
  # Converted at the checkpoint's own number of classes: every tensor must find its weight.
  converted = convert_state_dict(
      build_for_checkpoint(model_name, state, {k: v for k, v in options.items()
                                               if k != "num_classes"}), state)
  meta = {"model": model_name, "num_classes": converted.num_classes,
          "has_head": converted.has_head, "head": list(converted.head),
          "source": converted.source}
  return (meta, {_dotted(k): v for k, v in converted.params.items()},
          {_dotted(k): v for k, v in converted.batch_stats.items()})


def load_model(model_name: str, pretrained: str, *, rngs: Any,
               options: dict[str, Any]) -> Any:
  """`create_model(name, pretrained=PATH, **options)`: the model with PATH's weights, in eval
  mode. The checkpoint's number of classes unless `options` says another (a fresh head)."""
  from flax import nnx  # pylint: disable=import-outside-toplevel

  from cnn_jax import checkpoint  # pylint: disable=import-outside-toplevel
  from cnn_jax.models import registry  # pylint: disable=import-outside-toplevel

  path = os.path.expanduser(pretrained)
  if not os.path.exists(path):
    raise UserError(f"pretrained weights {pretrained!r} not found")
  meta, params_flat, stats_flat = _read_weights(model_name, path, options)
  options = dict(options)
  saved_classes = meta.get("num_classes")
  if "num_classes" not in options and saved_classes is not None:
    options["num_classes"] = saved_classes
  keeps_head = bool(meta.get("has_head", True)) and saved_classes is not None and \
      options.get("num_classes", saved_classes) == saved_classes
  # Every weight comes from the checkpoint but a new classifier's: only that one is drawn.
  fresh = () if keeps_head else tuple(meta.get("head", ()))
  model = registry.build(model_name, registry.get_constructor(model_name), rngs, options,
                         weights_to_load=keeps_head or bool(fresh), fresh=fresh)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  source = f"{pretrained} ({meta.get('source') or meta.get('model', '?')})"
  try:
    params, rest = checkpoint.apply_pretrained(params, rest, meta, params_flat, stats_flat,
                                               "keep" if keeps_head else "drop", source)
  except UserError as e:
    if meta.get("model") not in (None, model_name):
      raise UserError(f"{pretrained} was converted for {meta['model']}, not {model_name}: "
                      f"{e}") from None
    raise
  model = nnx.merge(graphdef, params, rest)
  model.eval()
  return model


def convert_file(model_name: str, checkpoint_path: str, out_dir: str) -> Converted:
  """Reads, converts and writes: the whole `python -m cnn_jax.convert`."""
  state = read_state_dict(checkpoint_path)
  model = build_for_checkpoint(model_name, state)
  converted = convert_state_dict(model, state)
  save_pretrained(out_dir, converted, model_name=model_name, checkpoint_path=checkpoint_path)
  return converted


# ------------------------------------------------------------------------------ CLI

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("model", None, "cnn_jax model name, e.g. convnextv2_tiny.")
  flags.DEFINE_string("checkpoint", None, "A .safetensors/.pth/.pt file.")
  flags.DEFINE_string("out", None, "New directory for the converted checkpoint.")


def main(argv: list[str]) -> None:
  cli.no_extra_args(argv)
  cli.require_flags("model", "checkpoint", "out")
  converted = convert_file(FLAGS.model, FLAGS.checkpoint, FLAGS.out)
  n_params = sum(v.size for v in converted.params.values())
  head = (f"{converted.num_classes}-class head" if converted.has_head
          else "no head (use --config.init_head=drop)")
  print(f"{FLAGS.model}: {n_params:,} parameters from {converted.source} -> {FLAGS.out} "
        f"({head})", flush=True)


if __name__ == "__main__":
  cli.run(main, define_flags)

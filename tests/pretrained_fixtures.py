"""The golden PyTorch fixtures (tests/fixtures/, written with torch/torchvision/timm by
tests/fixtures/make_pretrained_golden.py), and the helpers that load converted weights into a
model and write a model back as the PyTorch state dict the converter reads."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cnn_jax import convert
from helpers import REPO_ROOT

FIXTURES = os.path.join(REPO_ROOT, "tests", "fixtures")
PRETRAINED = os.path.join(FIXTURES, "pretrained")
TOLERANCE = 1e-4


def load_into(model: nnx.Module, converted: convert.Converted) -> nnx.Module:
  """Sets the converted arrays on the model's variables, then switches to eval mode."""
  for flat in (converted.params, converted.batch_stats):
    for path, value in flat.items():
      node = model
      for part in path[:-1]:
        node = node[part] if isinstance(part, int) else getattr(node, part)
      variable = getattr(node, path[-1])
      assert variable.shape == value.shape
      variable.set_value(jnp.asarray(value))
  model.eval()
  return model


def nhwc(x_nchw: np.ndarray) -> jax.Array:
  return jnp.asarray(x_nchw.transpose(0, 2, 3, 1))


def timm_state(arrays, prefix: str = "") -> dict[str, np.ndarray]:
  skip = ("config_", "input", "logits", "timm")
  return {k[len(prefix):]: arrays[k] for k in arrays.files
          if k.startswith(prefix) and not k[len(prefix):].startswith(skip)}


def export_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
  """cnn_jax model -> the PyTorch state dict the converter expects (its exact inverse)."""
  family = convert._family_of(model, {})  # pylint: disable=protected-access
  out = {}
  for kind in (nnx.Param, nnx.BatchStat):
    for path, variable in nnx.state(model, kind).flat_state():
      value = np.asarray(variable[...])
      if path[-1] == "kernel":
        value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
      out[family.key_of(tuple(path))] = np.ascontiguousarray(value)
  return out

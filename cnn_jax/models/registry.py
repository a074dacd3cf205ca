"""Name -> constructor registry for the model zoo (timm-style names)."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from flax import nnx

from cnn_jax.errors import UserError

_MODELS: dict[str, Callable[..., nnx.Module]] = {}


def register_model(fn: Callable[..., nnx.Module]) -> Callable[..., nnx.Module]:
  """Registers a variant constructor under its function name."""
  if fn.__name__ in _MODELS:
    raise ValueError(f"model {fn.__name__!r} registered twice")
  _MODELS[fn.__name__] = fn
  return fn


def list_models() -> list[str]:
  return sorted(_MODELS)


def close_matches(name: str) -> list[str]:
  return difflib.get_close_matches(name, list_models(), n=5, cutoff=0.5)


def get_constructor(name: str) -> Callable[..., nnx.Module]:
  if name not in _MODELS:
    hint = close_matches(name)
    hint_text = f"did you mean {', '.join(hint)}? " if hint else ""
    raise UserError(
        f"unknown model {name!r}; {hint_text}known models: {', '.join(list_models())}")
  return _MODELS[name]


def create_model(name: str, *, rngs: nnx.Rngs, **kwargs: Any) -> nnx.Module:
  """Builds the named variant; kwargs go to its constructor (num_classes, in_channels, ...)."""
  constructor = get_constructor(name)
  try:
    return constructor(rngs=rngs, **kwargs)
  except TypeError as e:
    # An unexpected keyword from a config override is the user's mistake, not ours.
    if "unexpected keyword argument" in str(e):
      raise UserError(f"model {name!r}: {e}") from None
    raise
  except ValueError as e:
    # Constructors raise ValueError for option values they cannot build (image size, ...).
    raise UserError(f"model {name!r}: {e}") from None

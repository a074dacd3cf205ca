"""Name -> constructor registry for the model zoo (timm-style names)."""

from __future__ import annotations

import difflib
import functools
import inspect
import math
import os
import typing
from collections.abc import Callable, Sequence
from typing import Any

import jax
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


def option_defaults(name: str) -> dict[str, Any]:
  """The options (keyword arguments with a default) of the module class that the model's
  constructor returns, by its return annotation, with their defaults; `rngs` is not one. A
  variant fixes some of them (a ResNet's depths): passing one of those is refused at build."""
  cls = typing.get_type_hints(get_constructor(name)).get("return")
  if not isinstance(cls, type):
    return {}
  return {p.name: p.default for p in inspect.signature(cls.__init__).parameters.values()
          if p.name != "rngs" and p.default is not inspect.Parameter.empty
          and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def create_model(name: str, pretrained: str | os.PathLike | None = None, *,
                 rngs: nnx.Rngs | None = None, **options: Any) -> nnx.Module:
  """Builds the named variant; options go to its constructor (num_classes, in_channels, ...).

  pretrained: a directory written by `python -m cnn_jax.convert`, or a `.safetensors` / `.pth`
  / `.pt` checkpoint from timm, torchvision or the official ConvNeXt repositories (converted in
  memory with the same converter and checks). The model then comes back in eval mode with the
  checkpoint's number of classes; a different `num_classes=` keeps a fresh head (as
  `init_head=drop`). rngs defaults to `nnx.Rngs(0)`: it seeds what the weights do not cover
  (a fresh head, dropout streams).
  """
  constructor = get_constructor(name)
  rngs = nnx.Rngs(0) if rngs is None else rngs
  if pretrained is None:
    return build(name, constructor, rngs, options)
  # Imported here, not at the top: reading and mapping checkpoints is tool-level code (orbax,
  # safetensors, torch) that sits above the models; only this call needs it, so importing
  # cnn_jax.models never pulls it in and the import arrows still run models -> layers.
  from cnn_jax import convert  # pylint: disable=import-outside-toplevel
  return convert.load_model(name, os.fspath(pretrained), rngs=rngs, options=options)


def build(name: str, constructor: Callable[..., nnx.Module], rngs: nnx.Rngs,
          options: dict[str, Any], *, weights_to_load: bool = False,
          fresh: Sequence[str] = ()) -> nnx.Module:
  """The constructor's model, with its option errors as the user's (one line).

  weights_to_load: every Param and BatchStat is left a placeholder (a jax.ShapeDtypeStruct of
  its shape) for the caller to fill with loaded weights, but those under the dotted paths in
  `fresh` (a new classifier: "head.fc"); those and the rest of the state (the RNG streams) are
  drawn, as a full build draws them. Nothing random is computed for weights that loading
  replaces (`initialize_without_weights`)."""
  construct = functools.partial(_construct, constructor, options)
  cache_key = _hashable((constructor, options))
  try:
    if weights_to_load:
      return initialize_without_weights(construct, rngs, cache_key=cache_key, fresh=fresh)
    return initialize(construct, rngs, cache_key=cache_key)
  except TypeError as e:
    # An unexpected keyword from a config override is the user's mistake, not ours.
    if "unexpected keyword argument" in str(e) or "multiple values for keyword" in str(e):
      raise UserError(f"model {name!r}: {e}") from None
    raise
  except ValueError as e:
    # Constructors raise ValueError for option values they cannot build (image size, ...).
    raise UserError(f"model {name!r}: {e}") from None


def _construct(constructor: Callable[..., nnx.Module], options: dict[str, Any],
               rngs: nnx.Rngs) -> nnx.Module:
  return constructor(rngs=rngs, **options)


def _hashable(value: Any) -> Any:
  """`value` with its dicts and lists as tuples; None where some part cannot be hashed."""
  if isinstance(value, dict) or hasattr(value, "to_dict"):
    items = value.to_dict().items() if hasattr(value, "to_dict") else value.items()
    value = tuple(sorted((k, _hashable(v)) for k, v in items))
  elif isinstance(value, (list, tuple)):
    value = tuple(_hashable(v) for v in value)
  try:
    hash(value)
  except TypeError:
    return None
  return value if value is not None else ("none",)


# XLA:CPU's backend optimisation is most of an initialiser's compile time and buys nothing in a
# program that runs once. Most of the rest is the random draws' threefry hashes, one fused loop
# per parameter: the classic loop emitter compiles them faster than the MLIR fusion emitters,
# to the same bits.
_CPU_INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0,
                              "xla_llvm_disable_expensive_passes": True,
                              "xla_cpu_use_fusion_emitters": False}
_MAX_CACHED_INITS = 64
# Above this many values, one program's compile and run take longer than the eager
# initialisers' one compile per shape (ResNet-50 is about level, ConvNeXt-B 2.5x slower).
_MAX_COMPILED_INIT_SIZE = 20_000_000
_EAGER = "eager"
_compiled_inits: dict[Any, Any] = {}


def initialize(construct: Callable[[nnx.Rngs], nnx.Module], rngs: nnx.Rngs, *,
               cache_key: Any = None) -> nnx.Module:
  """`construct(rngs)` with all its parameter initialisers compiled as one program.

  Eagerly, each initialiser's shape is its own compiled program (ResNet-20: 38 of them); every
  model is built here, so every path (a run, its resume, predict, 1 or 8 devices) draws the same
  weights for a seed. Under an outer trace (nnx.eval_shape, a user's jit) it calls construct:
  tracing costs nothing. `cache_key` (hashable; it must determine what construct builds) keeps
  the compiled program for the next build in this process.
  """
  if _under_a_trace(rngs):
    return construct(rngs)

  def compile_init() -> Any:
    lowered = nnx.jit(construct).lower(rngs)
    size = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(lowered.lowered.out_info))
    return _EAGER if size > _MAX_COMPILED_INIT_SIZE else lowered.compile(_init_options())

  compiled = _cached_compile("all weights", cache_key, rngs, compile_init)
  return construct(rngs) if compiled is _EAGER else compiled(rngs)


def _under_a_trace(rngs: nnx.Rngs) -> bool:
  return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(nnx.state(rngs)))


def _init_options() -> dict[str, Any] | None:
  return _CPU_INIT_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None


def _cached_compile(kind: Any, cache_key: Any, rngs: nnx.Rngs,
                    compile_fn: Callable[[], Any]) -> Any:
  """compile_fn(), kept in `_compiled_inits` for the next build of the same kind of program and
  `cache_key` with Rngs of the same streams and shapes (a None cache_key: not kept)."""
  key = None
  if cache_key is not None:
    key = (kind, cache_key, nnx.graphdef(rngs), jax.default_backend(),
           tuple((leaf.shape, str(leaf.dtype)) for leaf in jax.tree.leaves(nnx.state(rngs))))
  compiled = _compiled_inits.get(key) if key is not None else None
  if compiled is None:
    compiled = compile_fn()
    if key is not None:
      if len(_compiled_inits) >= _MAX_CACHED_INITS:
        _compiled_inits.pop(next(iter(_compiled_inits)))
      _compiled_inits[key] = compiled
  return compiled


WEIGHTS = nnx.Any(nnx.Param, nnx.BatchStat)


def initialize_without_weights(construct: Callable[[nnx.Rngs], nnx.Module], rngs: nnx.Rngs, *,
                               cache_key: Any = None, fresh: Sequence[str] = ()) -> nnx.Module:
  """`construct(rngs)` with its Params and BatchStats as placeholders (jax.ShapeDtypeStruct)
  for weights the caller loads, but those under the dotted paths in `fresh`; those and the rest
  of its state (RNG stream keys and counts) hold the values `initialize` gives, and `rngs`
  advances as it advances them.

  What is drawn is computed by the same traced construct with only it as output, so XLA drops
  every other initialiser from the program: a checkpoint's model is built without compiling
  and running draws that the checkpoint overwrites (ResNet-50: about 10 s of compile on a CPU).
  """
  fresh = tuple(fresh)

  def is_fresh(path: tuple[Any, ...], _) -> bool:
    name = ".".join(str(p) for p in path)
    return any(name == f or name.startswith(f + ".") for f in fresh)

  drawn = nnx.Any(nnx.Not(WEIGHTS), is_fresh)
  graphdef, placeholders, _ = nnx.split(nnx.eval_shape(construct, rngs), nnx.Not(drawn), ...)
  if _under_a_trace(rngs):
    return nnx.merge(graphdef, placeholders, nnx.state(construct(rngs), drawn))
  compiled = _cached_compile(
      ("without weights", fresh), cache_key, rngs,
      lambda: nnx.jit(lambda r: nnx.state(construct(r), drawn)).lower(rngs).compile(
          _init_options()))
  return nnx.merge(graphdef, placeholders, compiled(rngs))

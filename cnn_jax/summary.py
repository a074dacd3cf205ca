"""Model summary: parameters, MACs/FLOPs and activation memory, per top-level stage and in total.

  python -m cnn_jax.summary --model resnet50
  python -m cnn_jax.summary --model vit_base_patch16_224 --json
  python -m cnn_jax.summary --model lenet5 --image_size 28 --num_classes 10

Nothing is materialised: the model is built with `nnx.eval_shape` and its inference forward
(`model.eval()`) is traced with `jax.make_jaxpr` on abstract inputs, so ViT-L costs no memory.

Conventions (the numbers are exact counts of the traced program, not estimates):
- params: every `nnx.Param` leaf (what timm/torchvision count; BatchNorm statistics excluded).
- MACs: multiply-accumulates of the `conv_general_dilated` equations (output elements x kernel
  spatial size x input channels per group) and of the `dot_general` equations (output elements x
  contracted size), found by walking the jaxpr and every sub-jaxpr (jit/pjit, remat, custom_jvp,
  custom_vjp, scan bodies times their length, the costliest `cond` branch). Everything else
  (normalisation, activations, pooling, softmax, residual adds, biases) is not counted. This is
  the convention of the ResNet/ConvNeXt/timm papers, which print these MACs under the name
  "FLOPs"; the attention matmuls (q k^T and attn v) are dot_generals and do count, as in timm's
  and the ViT/DeiT figures (ViT-B/16: 17.56 G).
- FLOPs = 2 x MACs (one multiply plus one add), the hardware convention.
- activation_bytes: bytes of the outputs of those same conv/matmul equations (the layers'
  feature maps: what a conv/linear produces), one image, compute dtype.
- activation_bytes_all: bytes of the outputs of every primitive equation of the unfused
  forward (normalisations, activations, adds, reshapes included; wrappers such as jit/remat are
  not counted twice). An upper bound on what autodiff could keep for the backward pass before
  XLA fuses and rematerialises anything.
Per-image numbers come from a trace at batch 1; with `batch_size` > 1 a second trace gives the
batch totals (the `batch` entry).

Stages: the model's top-level child modules in execution order (stem, layer1..4, stages,
blocks, norm, head, ...). A top-level list/nnx.List is one row whose `items` break it down
(layer1 -> layer1.0, layer1.1, ...; stages -> stages.0..3; `--noitems` hides them).
During the trace every top-level child's `__call__` runs inside `jax.named_scope`, and each
equation goes to the stage whose scope it was traced in (sub-jaxprs inherit the scope of the
equation that holds them, so children called under nnx.remat/jit still count right).
The `(top)` row holds the model's own parameters (e.g. ViT's cls_token and pos_embed) and the
computation done in its own `__call__` (class-token concatenation, a flatten, a child invoked
through a method other than `__call__`); so the stage rows always add up to the total.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx

from cnn_jax import cli
from cnn_jax.errors import UserError
from cnn_jax.models import registry
from cnn_jax.models import layers

TOP = "(top)"
_MARK_ATTR = "_summary_stage"  # set on the (merged, traced) top-level children only
_SCOPE_PREFIX = "summary-stage:"
_MAC_PRIMITIVES = ("conv_general_dilated", "dot_general")


@dataclasses.dataclass
class _Stats:
  macs: int = 0
  activation_bytes: int = 0
  activation_bytes_all: int = 0

  def add(self, other: _Stats) -> None:
    self.macs += other.macs
    self.activation_bytes += other.activation_bytes
    self.activation_bytes_all += other.activation_bytes_all


# ----------------------------------------------------------------------------- jaxpr walking

def _aval_bytes(var: Any) -> int:
  aval = var.aval
  shape = getattr(aval, "shape", None)
  dtype = getattr(aval, "dtype", None)
  if shape is None or dtype is None:
    return 0
  try:
    itemsize = np.dtype(dtype).itemsize
  except TypeError:  # extended dtypes (PRNG keys)
    itemsize = 0
  return math.prod(shape) * itemsize


def eqn_macs(eqn: Any) -> int:
  """Exact multiply-accumulates of one conv_general_dilated or dot_general equation, else 0."""
  name = eqn.primitive.name
  if name == "dot_general":
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs_shape = eqn.invars[0].aval.shape
    out_shape = eqn.outvars[0].aval.shape
    return math.prod(out_shape) * math.prod(lhs_shape[d] for d in lhs_contract)
  if name == "conv_general_dilated":
    rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out feat, in feat, *spatial)
    rhs_shape = eqn.invars[1].aval.shape
    out_shape = eqn.outvars[0].aval.shape
    in_per_group = rhs_shape[rhs_spec[1]]
    kernel_spatial = math.prod(rhs_shape[d] for d in rhs_spec[2:])
    return math.prod(out_shape) * in_per_group * kernel_spatial
  return 0


def _sub_jaxprs(eqn: Any) -> list[Any]:
  """The jaxprs an equation holds in its params (pjit, remat, custom_jvp/vjp, scan, cond, ...)."""
  found = []

  def visit(value: Any) -> None:
    if hasattr(value, "eqns"):  # core.Jaxpr
      found.append(value)
    elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):  # core.ClosedJaxpr
      found.append(value.jaxpr)
    elif isinstance(value, (tuple, list)):
      for v in value:
        visit(v)

  for key, value in eqn.params.items():
    if eqn.primitive.name == "while" and key == "cond_jaxpr":
      continue
    visit(value)
  return found


def _stage_of(scopes: Sequence[str]) -> str:
  for s in scopes:
    if s.startswith(_SCOPE_PREFIX):
      return s[len(_SCOPE_PREFIX):]
  return TOP


def _scope_names(eqn: Any) -> tuple[str, ...]:
  stack = getattr(eqn.source_info.name_stack, "stack", ())
  return tuple(getattr(s, "name", "") for s in stack)


def walk_jaxpr(jaxpr: Any, stats: dict[str, _Stats], notes: set[str],
               scopes: tuple[str, ...] = (), multiplier: int = 1) -> None:
  """Adds every leaf equation's MACs and output bytes to stats[stage], recursively."""
  for eqn in jaxpr.eqns:
    eqn_scopes = scopes + _scope_names(eqn)
    subs = _sub_jaxprs(eqn)
    if subs:
      prim = eqn.primitive.name
      if prim == "scan":
        for sub in subs:
          walk_jaxpr(sub, stats, notes, eqn_scopes, multiplier * int(eqn.params["length"]))
      elif prim == "cond":  # only one branch runs: count the costliest
        best, best_macs = None, -1
        for sub in subs:
          branch: dict[str, _Stats] = {}
          walk_jaxpr(sub, branch, notes, eqn_scopes, multiplier)
          macs = sum(s.macs for s in branch.values())
          if macs > best_macs:
            best, best_macs = branch, macs
        for stage, s in (best or {}).items():
          stats.setdefault(stage, _Stats()).add(s)
      else:
        if prim == "while":
          notes.add("a while loop's body was counted once (unknown trip count)")
        for sub in subs:
          walk_jaxpr(sub, stats, notes, eqn_scopes, multiplier)
      continue
    stage = stats.setdefault(_stage_of(eqn_scopes), _Stats())
    out_bytes = sum(_aval_bytes(v) for v in eqn.outvars) * multiplier
    stage.activation_bytes_all += out_bytes
    if eqn.primitive.name in _MAC_PRIMITIVES:
      stage.macs += eqn_macs(eqn) * multiplier
      stage.activation_bytes += out_bytes


# ----------------------------------------------------------------------------- stages

@dataclasses.dataclass(frozen=True)
class _Entry:
  """A top-level child: `top` is the attribute; `marker` names the scope it is traced in."""
  top: str
  marker: str
  index: int | None  # position in a top-level list, None for a plain attribute
  obj: Any


def top_level_entries(model: nnx.Module) -> list[_Entry]:
  """The model's top-level child modules; the items of a top-level list count one by one."""
  entries = []
  for attr, value in vars(model).items():
    if attr.startswith("_"):
      continue
    if isinstance(value, (nnx.List, list, tuple)):
      entries.extend(_Entry(attr, f"{attr}.{i}", i, v) for i, v in enumerate(value)
                     if isinstance(v, nnx.Module))
    elif isinstance(value, nnx.Module):
      entries.append(_Entry(attr, attr, None, value))
  return entries


def _param_counts(model: nnx.Module, markers: set[str]) -> dict[str, int]:
  """Param count per entry marker; the model's own params and any others under TOP."""
  counts: dict[str, int] = {}
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    path = tuple(path)
    if len(path) > 1 and f"{path[0]}.{path[1]}" in markers:
      key = f"{path[0]}.{path[1]}"
    elif len(path) > 1 and str(path[0]) in markers:
      key = str(path[0])
    else:
      key = TOP  # e.g. ViT's cls_token / pos_embed, owned by the model itself
    counts[key] = counts.get(key, 0) + int(math.prod(var.get_value().shape))
  return counts


@contextlib.contextmanager
def _stage_scopes(classes: Sequence[type]) -> Iterator[None]:
  """Makes marked instances of these classes trace their __call__ inside a named scope.

  The class attribute is patched (Python looks `__call__` up on the type) and restored after;
  only instances carrying the marker attribute (the top-level children of the traced copy,
  and copies nnx transforms make of them) are scoped, other instances run unchanged.
  """
  originals = {cls: (cls.__dict__.get("__call__"), cls.__call__) for cls in classes}
  patched = []
  try:
    for cls, (_, original) in originals.items():
      def wrapped(self, *args, __original=original, **kwargs):
        stage = getattr(self, _MARK_ATTR, None)
        if stage is None:
          return __original(self, *args, **kwargs)
        with jax.named_scope(_SCOPE_PREFIX + stage):
          return __original(self, *args, **kwargs)
      cls.__call__ = wrapped
      patched.append(cls)
    yield
  finally:
    for cls in patched:
      own = originals[cls][0]
      if own is None:
        del cls.__call__
      else:
        cls.__call__ = own


# ----------------------------------------------------------------------------- public API

def _model_default(constructor: Any, model: nnx.Module, name: str, fallback: Any) -> Any:
  """A size the model was built with: its own int attribute (`image_size`, `in_channels`, or
  `default_<name>`), else the constructor's or the class's keyword default, else `fallback`."""
  for attr in (name, f"default_{name}"):
    value = getattr(model, attr, None)
    if isinstance(value, int) and not isinstance(value, bool):
      return value
  for fn in (constructor, type(model).__init__):
    param = inspect.signature(fn).parameters.get(name)
    if param is not None and param.default is not inspect.Parameter.empty:
      return param.default
  return fallback


def _build_abstract(model_name: str, model_kwargs: dict[str, Any]) -> nnx.Module:
  try:
    return nnx.eval_shape(
        lambda: registry.create_model(model_name, rngs=nnx.Rngs(0), **model_kwargs))
  except ValueError as e:  # bad sizes / options for this model: the user's to fix
    raise UserError(f"model {model_name!r} with {model_kwargs}: {e}") from None


def _trace(model: nnx.Module, entries: list[_Entry], input_shape: tuple[int, ...]
           ) -> tuple[dict[str, _Stats], set[str], tuple[int, ...]]:
  """Traces the eval-mode forward on an abstract input; stats per entry marker (+ TOP)."""
  graphdef, state = nnx.split(model)
  classes = list(dict.fromkeys(type(e.obj) for e in entries if callable(e.obj)))

  def forward(state, x):
    m = nnx.merge(graphdef, state)
    for entry in top_level_entries(m):
      setattr(entry.obj, _MARK_ATTR, entry.marker)
    return m(x)

  # Depthwise convs trace as conv equations (not the CPU's shifted multiply-adds) so that
  # their MACs are counted.
  with _stage_scopes(classes), layers.conv_impl("xla"):
    closed, out_shape = jax.make_jaxpr(forward, return_shape=True)(
        state, jax.ShapeDtypeStruct(input_shape, jnp.float32))
  stats: dict[str, _Stats] = {}  # insertion order = order of first use in the program
  notes: set[str] = set()
  walk_jaxpr(closed.jaxpr, stats, notes)
  out_shapes = jax.tree.leaves(out_shape)
  return stats, notes, tuple(out_shapes[0].shape) if out_shapes else ()


def _row(name: str, params: int, s: _Stats) -> dict[str, Any]:
  return {"name": name, "params": params, "macs": s.macs, "flops": 2 * s.macs,
          "activation_bytes": s.activation_bytes,
          "activation_bytes_all": s.activation_bytes_all}


def _stage_rows(entries: list[_Entry], stats: dict[str, _Stats], params: dict[str, int]
                ) -> list[dict[str, Any]]:
  """One row per top-level attribute (a list's row sums its `items`), in execution order."""
  by_top: dict[str, list[_Entry]] = {}
  for e in entries:
    by_top.setdefault(e.top, []).append(e)
  marker_top = {e.marker: e.top for e in entries}
  # Execution order first; children that ran no equation (identity dropout, unused) after.
  order = list(dict.fromkeys([marker_top[m] for m in stats if m in marker_top] + list(by_top)))
  rows = []
  for top in order:
    items = [_row(e.marker, params.get(e.marker, 0), stats.get(e.marker, _Stats()))
             for e in by_top[top]]
    if by_top[top][0].index is None:
      row = items[0]
    else:
      total = _Stats()
      for e in by_top[top]:
        total.add(stats.get(e.marker, _Stats()))
      row = _row(top, sum(i["params"] for i in items), total)
      row["items"] = items
    if row["params"] or row["macs"] or row["activation_bytes_all"]:
      rows.append(row)
  rows.append(_row(TOP, params.get(TOP, 0), stats.get(TOP, _Stats())))
  return rows


def summarize(model_name: str, image_size: int | None = None, batch_size: int = 1,
              **model_kwargs: Any) -> dict[str, Any]:
  """Params, MACs, FLOPs and activation memory of a registered model, per stage and in total.

  image_size: input side (square); None = the model's default (its `image_size` or
    `default_image_size` attribute, else its constructor's `image_size` default, else 224).
    It is also passed to the constructor when the model takes an `image_size` argument.
  batch_size: the `batch` entry holds the totals for this many images.
  model_kwargs: constructor overrides (num_classes, in_channels, dtype, ...); None = default.
  Returns a JSON-serialisable dict; params, macs, flops and activation bytes (total and per
  stage) are for one image. See the module docstring for the definitions.
  Raises UserError for an unknown name (with close matches) or options the model rejects.
  """
  if batch_size < 1:
    raise UserError(f"batch_size must be >= 1 (got {batch_size})")
  constructor = registry.get_constructor(model_name)  # UserError with close matches
  model_kwargs = {k: v for k, v in model_kwargs.items() if v is not None}
  if model_kwargs.get("attention_impl") == "cudnn":
    # The same function counted through JAX's own ops: cuDNN's attention is one call whose
    # matmuls the jaxpr walk cannot see, and one that only a GPU process may build.
    model_kwargs["attention_impl"] = "xla"
  if image_size is not None:
    try:
      model = _build_abstract(model_name, {**model_kwargs, "image_size": image_size})
    except UserError as e:
      if "unexpected keyword argument 'image_size'" not in str(e):
        raise
      model = _build_abstract(model_name, model_kwargs)  # a model without an image_size arg
  else:
    model = _build_abstract(model_name, model_kwargs)
    image_size = _model_default(constructor, model, "image_size", 224)
  model.eval()

  entries = top_level_entries(model)
  requested_channels = model_kwargs.get("in_channels")
  in_channels = requested_channels or _model_default(constructor, model, "in_channels", 3)

  def trace(batch: int, channels: int):
    return _trace(model, entries, (batch, image_size, image_size, channels))

  try:
    stats, notes, out_shape = trace(1, in_channels)
  except (TypeError, ValueError) as error:
    # Unless given, the channel count is a guess from the constructor defaults: try 3 and 1.
    others = [] if requested_channels else [c for c in (3, 1) if c != in_channels]
    for channels in others:
      try:
        stats, notes, out_shape = trace(1, channels)
        in_channels = channels
        break
      except (TypeError, ValueError):
        continue
    else:
      raise UserError(f"cannot trace {model_name!r} on a {image_size}x{image_size}x"
                      f"{in_channels} input: {error}") from None

  params = _param_counts(model, {e.marker for e in entries})
  total = _Stats()
  for s in stats.values():
    total.add(s)
  result = {
      "model": model_name,
      "input_shape": [1, image_size, image_size, in_channels],  # NHWC, one image
      "image_size": image_size,
      "in_channels": in_channels,
      "num_classes": out_shape[-1] if out_shape else None,
      "output_shape": list(out_shape),
      "batch_size": batch_size,
      "params": sum(params.values()),
      "macs": total.macs,
      "flops": 2 * total.macs,
      "activation_bytes": total.activation_bytes,
      "activation_bytes_all": total.activation_bytes_all,
      "stages": _stage_rows(entries, stats, params),
      "conventions": {
          "macs": "multiply-accumulates of conv and matmul (dot_general) ops, one image; "
                  "what the ResNet/ConvNeXt/timm papers call FLOPs",
          "flops": "2 x macs",
          "activation_bytes": "bytes of the conv/matmul outputs, one image",
          "activation_bytes_all": "bytes of the outputs of every op of the unfused forward, "
                                  "one image",
          "stages": "top-level children in execution order; a top-level list's row sums its "
                    "items; '(top)' = the model's own params and ops outside any child",
      },
      "notes": sorted(notes),
  }
  if batch_size > 1:
    bstats, _, _ = trace(batch_size, in_channels)
    total = _Stats()
    for s in bstats.values():
      total.add(s)
  result["batch"] = {"macs": total.macs, "flops": 2 * total.macs,
                     "activation_bytes": total.activation_bytes,
                     "activation_bytes_all": total.activation_bytes_all}
  return result


# ----------------------------------------------------------------------------- CLI

def _g(n: int) -> str:
  return f"{n / 1e9:.3f}"


def _mib(n: int) -> str:
  return f"{n / 2**20:.2f}"


def format_summary(r: dict[str, Any], items: bool = True) -> str:
  """The summary as a table; `items` also lists the entries of list-valued stages."""
  lines = [
      f"model {r['model']}: input {r['image_size']}x{r['image_size']}x{r['in_channels']} "
      f"(NHWC), output {r['output_shape']}",
      "MACs = multiply-accumulates of conv/matmul ops (the papers' \"FLOPs\"); "
      "FLOPs = 2 x MACs; per image.",
      "act = bytes of the conv/matmul outputs; act(all) = outputs of every op, unfused; "
      "per image.",
      "",
  ]

  def cells(s: dict[str, Any], name: str) -> tuple[str, ...]:
    return (name, f"{s['params']:,}", _g(s["macs"]), _g(s["flops"]),
            _mib(s["activation_bytes"]), _mib(s["activation_bytes_all"]))

  header = ("stage", "params", "GMACs", "GFLOPs", "act MiB", "act(all) MiB")
  rows = []
  for stage in r["stages"]:
    rows.append(cells(stage, stage["name"]))
    if items:
      rows += [cells(item, "  " + item["name"]) for item in stage.get("items", [])]
  total = cells(r, "total")
  widths = [max(len(row[i]) for row in [header, total, *rows]) for i in range(len(header))]
  rule = tuple("-" * w for w in widths)

  def fmt(row: tuple[str, ...]) -> str:
    return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                     for i, (c, w) in enumerate(zip(row, widths)))

  lines += [fmt(header), fmt(rule), *map(fmt, rows), fmt(rule), fmt(total)]
  lines.append(f"\nparams {r['params']:,}  MACs {r['macs']:,} ({_g(r['macs'])} G)  "
               f"FLOPs {r['flops']:,} ({_g(r['flops'])} G)")
  if r["batch_size"] > 1:
    b = r["batch"]
    lines.append(f"batch of {r['batch_size']}: MACs {_g(b['macs'])} G, FLOPs {_g(b['flops'])} G, "
                 f"act {_mib(b['activation_bytes'])} MiB, "
                 f"act(all) {_mib(b['activation_bytes_all'])} MiB")
  lines += [f"note: {n}" for n in r["notes"]]
  return "\n".join(lines)


FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("model", None, "Registered model name, e.g. resnet50.")
  flags.DEFINE_integer("image_size", None, "Input side in pixels (default: the model's own).")
  flags.DEFINE_integer("batch_size", 1, "Batch size for the batch totals.")
  flags.DEFINE_integer("num_classes", None, "Classes of the head (default: the model's own).")
  flags.DEFINE_integer("in_channels", None, "Input channels (default: the model's own).")
  flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"],
                    "Compute dtype (changes activation bytes only).")
  flags.DEFINE_bool("json", False, "Print one JSON object instead of the table.")
  flags.DEFINE_bool("items", True, "List the entries of list-valued stages (blocks.0, ...).")


def main(argv: Sequence[str]) -> None:
  cli.no_extra_args(argv)
  if not FLAGS.model:
    raise UserError("--model is required (see --helpfull for the flags; "
                    f"models: {', '.join(registry.list_models())})")
  kwargs: dict[str, Any] = {"num_classes": FLAGS.num_classes,
                            "in_channels": FLAGS.in_channels}
  if FLAGS.dtype:
    kwargs["dtype"] = jnp.dtype(FLAGS.dtype)
  result = summarize(FLAGS.model, image_size=FLAGS.image_size, batch_size=FLAGS.batch_size,
                     **kwargs)
  print(json.dumps(result) if FLAGS.json else format_summary(result, FLAGS.items))


if __name__ == "__main__":
  cli.run(main, define_flags)

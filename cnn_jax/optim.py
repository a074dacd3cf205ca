"""Optimizer, learning-rate schedule, weight-decay mask and layer-wise lr decay, from config.

Everything is optax; this module only decides which optax pieces a config asks for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import optax

from cnn_jax.errors import UserError

# Parameters that are never weight-decayed besides the 1-D ones (biases, norm scales and
# shifts, GRN gamma/beta, LayerScale): ViT's position embeddings and class token, FCMAE's
# mask token — as in timm's and the ConvNeXt-V2 repository's no_weight_decay lists.
NO_DECAY_NAMES = frozenset({"pos_embed", "cls_token", "mask_token"})

LayerIdFn = Callable[[tuple[str, ...]], int]


def path_names(path: Sequence[Any]) -> tuple[str, ...]:
  """('blocks', '0', 'attn', 'qkv', 'kernel') from a pytree key path of an nnx.State."""
  names = []
  for key in path:
    if isinstance(key, jax.tree_util.DictKey):
      names.append(str(key.key))
    elif isinstance(key, jax.tree_util.SequenceKey):
      names.append(str(key.idx))
    elif isinstance(key, jax.tree_util.GetAttrKey) and key.name != "value":
      names.append(key.name)
  return tuple(names)


def named_leaves(tree: Any) -> dict[str, Any]:
  """{"layer1.0.conv1.kernel": leaf} for every leaf of a pytree (an nnx.State or nested dicts),
  its path's `path_names` joined by dots."""
  return {".".join(path_names(path)): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def peak_learning_rate(config: ml_collections.ConfigDict) -> float:
  """`optimizer.learning_rate`, times batch / `scale_lr_by_batch_over` when that is set (>0)."""
  lr = config.optimizer.learning_rate
  if config.optimizer.scale_lr_by_batch_over > 0:
    lr = lr * config.data.batch_size / config.optimizer.scale_lr_by_batch_over
  return lr


def create_schedule(config: ml_collections.ConfigDict, total_steps: int,
                    steps_per_epoch: int) -> optax.Schedule:
  sched = config.schedule
  peak = peak_learning_rate(config)
  warmup = int(round(sched.warmup_epochs * steps_per_epoch))
  if sched.name != "constant" and warmup >= total_steps:
    raise UserError(f"schedule.warmup_epochs={sched.warmup_epochs} is {warmup} steps, not "
                    f"fewer than the run's {total_steps} steps")
  if sched.name == "constant":
    return optax.constant_schedule(peak)
  if sched.name == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=sched.init_lr_fraction * peak, peak_value=peak, warmup_steps=warmup,
        decay_steps=total_steps, end_value=sched.end_lr_fraction * peak)
  if sched.name == "onecycle":
    return optax.cosine_onecycle_schedule(
        transition_steps=total_steps, peak_value=peak,
        pct_start=max(warmup, 1) / total_steps, div_factor=1.0 / sched.init_lr_fraction,
        final_div_factor=sched.init_lr_fraction / max(sched.end_lr_fraction, 1e-12))
  if sched.name == "step":
    # He et al.: lr / 10 at fixed steps (32k and 48k of 64k on CIFAR).
    boundaries = [int(b) for b in sched.decay_steps]
    if any(b <= warmup or b >= total_steps for b in boundaries):
      raise UserError(f"schedule.decay_steps={boundaries} must lie after the warmup "
                      f"({warmup} steps) and before the end ({total_steps} steps)")
    stepped = optax.piecewise_constant_schedule(
        peak, {b - warmup: sched.decay_factor for b in boundaries})
    if not warmup:
      return stepped
    ramp = optax.linear_schedule(sched.init_lr_fraction * peak, peak, warmup)
    return optax.join_schedules([ramp, stepped], [warmup])
  raise UserError(f"unknown schedule.name {sched.name!r}; "
                  "choose constant, warmup_cosine, onecycle or step")


def weight_decay_mask(which: str) -> Callable[[Any], Any] | None:
  """'all' (He et al., torch SGD's weight_decay) or 'kernels' (no decay on 1-D parameters
  and on NO_DECAY_NAMES, as timm and the ConvNeXt recipes do)."""
  if which == "all":
    return None
  if which == "kernels":
    def mask(params):
      return jax.tree_util.tree_map_with_path(
          lambda path, p: p.ndim > 1 and not NO_DECAY_NAMES & set(path_names(path)), params)
    return mask
  raise UserError(f"unknown optimizer.weight_decay_on {which!r}; choose all or kernels")


def layer_decay_labels(params: Any, layer_id: LayerIdFn) -> Any:
  return jax.tree_util.tree_map_with_path(
      lambda path, _: f"layer_{layer_id(path_names(path))}", params)


def layer_decay_scales(num_layers: int, decay: float) -> dict[str, optax.GradientTransformation]:
  """ConvNeXt-V2/BEiT layer-wise lr decay: layer i of 0..num_layers+1 gets decay^(L+1-i)."""
  return {f"layer_{i}": optax.scale(decay ** (num_layers + 1 - i))
          for i in range(num_layers + 2)}


def create_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule, *,
                     params: Any = None, layer_id: LayerIdFn | None = None,
                     num_layers: int | None = None) -> optax.GradientTransformation:
  """The optimizer of `config.optimizer`. Layer decay needs `params` and the model's
  `layer_id`/`num_layers` (ConvNeXt and ViT define them)."""
  opt = config.optimizer
  mask = weight_decay_mask(opt.weight_decay_on)
  if opt.name == "adamw":
    tx = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                     weight_decay=opt.weight_decay, mask=mask)
  elif opt.name == "sgd":
    tx = optax.chain(optax.add_decayed_weights(opt.weight_decay, mask=mask),
                     optax.sgd(schedule, momentum=opt.momentum, nesterov=opt.nesterov))
  elif opt.name == "lamb":
    tx = optax.lamb(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                    weight_decay=opt.weight_decay, mask=mask)
  elif opt.name == "lars":
    tx = optax.lars(schedule, weight_decay=opt.weight_decay, weight_decay_mask=mask or True,
                    trust_ratio_mask=mask or True, momentum=opt.momentum,
                    nesterov=opt.nesterov)
  else:
    raise UserError(f"unknown optimizer.name {opt.name!r}; choose adamw, sgd, lamb or lars")

  if opt.layer_decay < 1.0:
    if layer_id is None or num_layers is None or params is None:
      raise UserError(f"optimizer.layer_decay={opt.layer_decay} needs a model that defines "
                      f"layer ids for lr decay (ConvNeXt, ViT); {config.model.name} does not")
    tx = optax.chain(tx, optax.multi_transform(
        layer_decay_scales(num_layers, opt.layer_decay), layer_decay_labels(params, layer_id)))
  if opt.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
  if opt.grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=opt.grad_accum_steps)
  return tx

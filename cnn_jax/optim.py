"""Optimizer and learning-rate schedule from `config.optimizer` / `config.schedule` (optax)."""

from __future__ import annotations

import jax
import ml_collections
import optax

from cnn_jax.errors import UserError


def create_schedule(config: ml_collections.ConfigDict, total_steps: int,
                    steps_per_epoch: int) -> optax.Schedule:
  sched = config.schedule
  peak = config.optimizer.learning_rate
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
  raise UserError(f"unknown schedule.name {sched.name!r}; choose constant, warmup_cosine, onecycle")


def _decay_mask(which: str):
  """Which parameters weight decay touches: 'all' (He et al., torch SGD) or 'kernels'
  (matrices and conv kernels only: no decay on biases and norm scales, the 1-D leaves)."""
  if which == "all":
    return None
  if which == "kernels":
    return lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  raise UserError(f"unknown optimizer.weight_decay_on {which!r}; choose all or kernels")


def create_optimizer(config: ml_collections.ConfigDict,
                     schedule: optax.Schedule) -> optax.GradientTransformation:
  opt = config.optimizer
  mask = _decay_mask(opt.weight_decay_on)
  if opt.name == "adamw":
    tx = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                     weight_decay=opt.weight_decay, mask=mask)
  elif opt.name == "sgd":
    tx = optax.chain(optax.add_decayed_weights(opt.weight_decay, mask=mask),
                     optax.sgd(schedule, momentum=opt.momentum, nesterov=opt.nesterov))
  else:
    raise UserError(f"unknown optimizer.name {opt.name!r}; choose adamw or sgd")
  if opt.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
  return tx

"""experiments/fcmae_ablations: the fine-tune sweep starts each point from the right
pre-training run, and the narrow ablation model fits both tasks."""

from __future__ import annotations

import os

import jax
from flax import nnx

from cnn_jax import fcmae, sweep, train
from helpers import REPO_ROOT

SWEEPS = os.path.join(REPO_ROOT, "configs", "sweeps")


def _points(name: str) -> list[sweep.Point]:
  return sweep.build_points(sweep.load_config_file(os.path.join(SWEEPS, f"{name}.py")))


def test_pretraining_points_change_one_field_of_the_default():
  points = {p.config.ablation: p.config for p in _points("fcmae_ablations_pretrain")}
  default = points["fcmae"]
  assert (default.model.grn, default.fcmae.sparse, default.fcmae.mask_ratio) == (True, True, 0.6)
  changed = {label: [key for key, get in (("grn", lambda c: c.model.grn),
                                          ("sparse", lambda c: c.fcmae.sparse),
                                          ("mask", lambda c: c.fcmae.mask_ratio))
                     if get(c) != get(default)] for label, c in points.items()}
  assert changed == {"fcmae": [], "no_grn": ["grn"], "dense": ["sparse"], "mask0.4": ["mask"],
                     "mask0.8": ["mask"]}


def test_fine_tune_points_start_from_their_pretraining_run_encoder():
  pretrain_sweep = sweep.load_config_file(os.path.join(SWEEPS, "fcmae_ablations_pretrain.py"))
  # The directory the pre-training sweep really writes each encoder to, by label.
  encoders = {p.config.ablation: (os.path.join(pretrain_sweep.workdir, p.name, "encoder"), p.config)
              for p in sweep.build_points(pretrain_sweep)}
  points = _points("fcmae_ablations_finetune")
  used = set()
  for p in points:
    c = p.config
    train.check_init_from(c)  # scratch points opt out of the recipe's required init_from
    if c.ablation.startswith("scratch"):
      assert c.init_from == "" and not c.init_from_required, c.ablation
      continue
    source = next((label for label, (d, _) in encoders.items() if d == c.init_from), None)
    assert source is not None, (c.ablation, c.init_from)
    assert c.ablation.startswith(source), c.ablation  # the label says which run it starts from
    _, pretrain_config = encoders[source]
    assert c.model.grn == pretrain_config.model.grn, c.ablation  # GRN off in both phases
    assert c.init_head == "drop"
    used.add(source)
  assert used == set(encoders)  # every pre-training run gets fine-tuned
  # The key comparison has three fine-tuning seeds on each side, same labels and recipe.
  for side in ("scratch", "fcmae"):
    seeds = sorted(p.config.seed for p in points
                   if p.config.ablation.split("_s")[0] == side)
    assert seeds == [0, 1, 2], side
  labelled = {p.config.data.train_fraction for p in points
              if not p.config.ablation.endswith(("_full",))}
  assert labelled == {0.1}


def test_pretrained_encoder_shapes_match_the_fine_tuning_model():
  by_label = {p.config.ablation: p.config for p in _points("fcmae_ablations_pretrain")}
  finetune = {p.config.ablation: p.config for p in _points("fcmae_ablations_finetune")}
  for label in ("fcmae", "no_grn"):
    pre = by_label[label]
    encoder = nnx.eval_shape(lambda: fcmae.build_model(pre)).encoder
    model = nnx.eval_shape(lambda: train.build_model(finetune[label]))
    assert encoder.total_stride == pre.fcmae.patch_size == 4
    assert pre.data.image_size // pre.fcmae.patch_size == 4  # a 4x4 mask grid
    enc_shapes = jax.tree.map(lambda x: x.shape, nnx.state(encoder, nnx.Param)).flat_state()
    ft_shapes = jax.tree.map(lambda x: x.shape, nnx.state(model, nnx.Param)).flat_state()
    enc = {path: v for path, v in enc_shapes}
    ft = {path: v for path, v in ft_shapes if path[0] != "head"}
    assert enc.keys() == ft.keys() and enc == ft, label
    assert any("grn" in "/".join(map(str, path)) for path in enc) == pre.model.grn


def test_full_scale_sweeps_fine_tune_every_imagenet_encoder_and_a_scratch_baseline():
  pretrain_sweep = sweep.load_config_file(
      os.path.join(SWEEPS, "fcmae_ablations_imagenet_pretrain.py"))
  pretrain_points = sweep.build_points(pretrain_sweep)
  assert all(p.config.task == "fcmae" and p.config.model.name == "convnextv2_base"
             for p in pretrain_points)
  encoders = {os.path.join(pretrain_sweep.workdir, p.name, "encoder"): p.config
              for p in pretrain_points}
  assert len(encoders) == 5
  points = _points("fcmae_ablations_imagenet_finetune")
  scratch = [p.config for p in points if not p.config.init_from]
  assert len(scratch) == 1 and not scratch[0].init_from_required
  tuned = {p.config.init_from: p.config for p in points if p.config.init_from}
  assert set(tuned) == set(encoders)
  for path, c in tuned.items():
    train.check_init_from(c)
    assert c.model.grn == encoders[path].model.grn and c.model.name == "convnextv2_base"

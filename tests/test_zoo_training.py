"""Every family trains through the same loop: a few steps on real digits, and it learns."""

import json

import pytest

from cnn_jax import train
from helpers import load_config

# Plain nets and ViTs start slower (no shortcuts / no convolutional prior): more steps.
STEPS = {"plain20": 150, "vit_tiny_patch4_32": 200}
# ConvNeXt V2 with one block per stage (every kind of layer, 1.4 M parameters instead of 3.4 M):
# each block costs seconds of compile and step time on CPU. Atto at full depth learns digits in
# test_models_convnext.
MODEL_OPTIONS = {"convnextv2_atto": {"model.depths": (1, 1, 1, 1)}}


# A small ResNet and a small ConvNeXt V2 run in `make test`; the other families, a minute or
# more each on 2 cores, in `make test-slow`.
SLOW = pytest.mark.slow


def learning_run_config(model_name: str, **overrides):
  """The learning run's config for `model_name`. test_train's BatchNorm check stops this
  resnet20 run after 2 steps: the same compiled steps, from the session's compilation cache."""
  steps = STEPS.get(model_name, 40)
  # One device: the loop and the learning are what is checked here (the sharded path is
  # tests/test_training_at_scale's), and 8 fake devices on 2 cores cost far more CPU time.
  # Batch 32: the losses still fall well past the bound in 40 steps, at half the step time.
  # 300 test images in one eval batch, not 1,000 in five: accuracy is checked against 0.3
  # (chance 0.1), which 300 images tell as well.
  config = load_config("zoo_digits", model_name, **{
      "total_steps": steps, "log_every_steps": 10, "eval_every_steps": steps,
      "data.batch_size": 32, "data.num_test": 300, "data.eval_batch_size": 300,
      "schedule.warmup_epochs": 0.1, "mesh.num_devices": 1,
      **MODEL_OPTIONS.get(model_name, {}), **overrides})
  if model_name == "convnext_roadmap":
    config.model.step = 4  # ResNeXt-ified inverted bottleneck, BatchNorm: a mid-roadmap model
  return config


@pytest.mark.parametrize("model_name", [
    "resnet20", "convnextv2_atto",
    pytest.param("plain20", marks=SLOW), pytest.param("resnet18", marks=SLOW),
    pytest.param("convnext_roadmap", marks=SLOW), pytest.param("vit_tiny_patch4_32", marks=SLOW),
    pytest.param("alexnet", marks=SLOW),
])
def test_family_learns_on_digits(tmp_path, model_name):
  config = learning_run_config(model_name)
  final = train.train_and_evaluate(config, str(tmp_path))
  losses = [json.loads(line)["train/loss"] for line in open(tmp_path / "metrics.jsonl")
            if "train/loss" in line]
  assert losses[-1] < 0.7 * losses[0], losses
  assert final["accuracy"] > 0.3, final  # chance is 0.1

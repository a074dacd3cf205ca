"""The paper-recipe configs: the full-scale numbers are the papers', and each recipe's smoke
variant (same model, optimizer and augmentations; synthetic 32 px data) trains end to end."""

import pytest

from cnn_jax import optim, train
from helpers import load_config


def test_full_scale_recipes_carry_the_papers_numbers():
  r50 = load_config("resnet50_imagenet")
  assert optim.peak_learning_rate(r50) == pytest.approx(0.4)  # 0.1 x 1024 / 256
  assert r50.num_epochs == 90 and r50.optimizer.weight_decay_on == "all"
  r50_step = load_config("resnet50_imagenet", "step")
  assert r50_step.schedule.decay_steps == tuple(e * (1_281_167 // 1024) for e in (30, 60, 80))
  cnx = load_config("convnext_imagenet", "small")
  assert optim.peak_learning_rate(cnx) == pytest.approx(4e-3)  # at batch 4096
  assert cnx.model.drop_path_rate == 0.4 and cnx.ema_decay == 0.9999
  assert cnx.data.mixup.mixup_alpha == 0.8 and cnx.data.random_erasing == 0.25
  vit = load_config("vit_small_imagenet")
  assert optim.peak_learning_rate(vit) == pytest.approx(1e-3)  # 5e-4 x 1024 / 512
  cifar = load_config("resnet_cifar10", "resnet110")
  assert cifar.model.name == "resnet110" and cifar.schedule.decay_steps == (32000, 48000)
  with pytest.raises(ValueError, match="name one size"):
    load_config("convnext_imagenet", "tiny,huge")


# The ImageNet-size models cost 30-100 s of compile each on 2 cores: `make test-slow`.
@pytest.mark.parametrize("name, arg", [
    ("resnet_cifar10", "resnet20,smoke"),
    pytest.param("resnet50_imagenet", "step,smoke", marks=pytest.mark.slow),
    pytest.param("convnext_imagenet", "tiny,smoke", marks=pytest.mark.slow),
    pytest.param("vit_small_imagenet", "smoke", marks=pytest.mark.slow),
])
def test_smoke_variant_trains(tmp_path, name, arg):
  # One device: the recipe is what is checked; 8 fake devices on 2 cores cost each step and
  # the compile CPU time.
  config = load_config(name, arg, **{"mesh.num_devices": 1})
  final = train.train_and_evaluate(config, str(tmp_path))
  assert 0.0 <= final["accuracy"] <= 1.0 and final["loss"] > 0
  assert (tmp_path / "final_metrics.json").exists()


@pytest.mark.parametrize("name, arg", [
    ("resnet50_imagenet", None), ("convnext_imagenet", "tiny"),
    ("convnextv2_imagenet_finetune", "tiny"), ("fcmae_convnextv2_imagenet", "tiny"),
    ("vit_small_imagenet", None)])
def test_imagenet_recipes_let_remat_be_switched_on(name, arg):
  from flax import nnx

  assert load_config(name, arg).model.remat is False
  config = load_config(name, arg, **{"model.remat": True})
  model = nnx.eval_shape(lambda: train.build_model(config))
  # ResNet and ViT keep the switch on the model, ConvNeXt on each stage.
  switches = [getattr(model, "remat", None)] + [getattr(s, "remat", None)
                                                for s in getattr(model, "stages", [])]
  assert True in switches and False not in switches

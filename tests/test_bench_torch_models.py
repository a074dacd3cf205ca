"""bench_torch.py's PyTorch definitions of the small models have cnn_jax's parameter counts,
so `bench --vs_torch` compares the same networks. Runs only where torch is importable."""

import pytest
from flax import nnx

from cnn_jax import bench_torch, train
from cnn_jax.models import create_model, layers
from helpers import abstract_model, load_config

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("name,in_channels,image_size", [
    ("lenet5", 1, 32), ("lenet5", 3, 32), ("lenet5", 1, 28),
    ("resnet20", 3, 32), ("resnet56", 3, 32), ("plain56", 3, 32), ("resnet110", 3, 32),
])
def test_torch_definition_has_the_cnn_jax_parameter_count(name, in_channels, image_size):
  model, source = bench_torch.create_model(name, 10, in_channels, image_size)
  assert "bench_torch" in source
  torch_count = sum(p.numel() for p in model.parameters() if p.requires_grad)
  kwargs = {"in_channels": in_channels, "image_size": image_size} if name == "lenet5" else {}
  ours = layers.count_params(create_model(name, num_classes=10, rngs=nnx.Rngs(0), **kwargs))
  assert torch_count == ours
  assert model(torch.zeros(2, in_channels, image_size, image_size)).shape == (2, 10)


@pytest.mark.parametrize("key", ["resnet_micro", "convnext_micro_bn", "hybrid_micro",
                                 "vit_micro"])
@pytest.mark.parametrize("canvas", [64, 96])
def test_long_range_models_have_the_experiments_parameter_count(key, canvas):
  # The experiment's models as its config builds them: 1 channel, 2 classes, sized to the canvas.
  config = load_config("longrange", f"{key},14,{canvas}")
  ours = layers.count_params(nnx.eval_shape(lambda: train.build_model(config)))
  torch_name = "hybrid_micro_bn" if key == "hybrid_micro" else key  # the config's norm="bn"
  model, source = bench_torch.create_model(torch_name, 2, 1, canvas)
  assert "bench_torch" in source
  assert sum(p.numel() for p in model.parameters() if p.requires_grad) == ours
  assert model.eval()(torch.zeros(2, 1, canvas, canvas)).shape == (2, 2)


def test_timm_options_reach_the_model():
  pytest.importorskip("timm")
  counts = {}
  for patch_size in (1, 2, 4):
    model, source = bench_torch.create_model("convnextv2_atto", 10, 3, 32,
                                             {"patch_size": patch_size})
    assert source.startswith("timm")
    assert model.stem[0].stride == (patch_size, patch_size)
    # cnn_jax's patch_size changes only the stem: the final map is 32 / (patch_size * 8) px.
    assert model.forward_features(torch.zeros(1, 3, 32, 32)).shape[-1] == 4 // patch_size or (
        patch_size == 4)
    counts[patch_size] = sum(p.numel() for p in model.parameters())
    ours = layers.count_params(abstract_model("convnextv2_atto", num_classes=10,
                                              patch_size=patch_size))
    assert counts[patch_size] == ours
  with pytest.raises(ValueError, match="takes no options"):
    bench_torch.create_model("resnet20", 10, 3, 32, {"patch_size": 1})

"""bench_torch.py's PyTorch definitions of the small models have cnn_jax's parameter counts,
so `bench --vs_torch` compares the same networks. Runs only where torch is importable."""

import pytest
from flax import nnx

from cnn_jax import bench_torch
from cnn_jax.models import create_model, layers

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

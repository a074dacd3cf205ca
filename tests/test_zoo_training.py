"""Every family trains through the same loop: a few steps on real digits, and it learns."""

import pytest

from cnn_jax import train
from helpers import learning_run_config
from helpers import losses as run_losses

# A small ResNet and a small ConvNeXt V2 run in `make test`; the other families, a minute or
# more each on 2 cores, in `make test-slow`.
SLOW = pytest.mark.slow


@pytest.mark.parametrize("model_name", [
    "resnet20", "convnextv2_atto",
    pytest.param("plain20", marks=SLOW), pytest.param("resnet18", marks=SLOW),
    pytest.param("convnext_roadmap", marks=SLOW), pytest.param("vit_tiny_patch4_32", marks=SLOW),
    pytest.param("alexnet", marks=SLOW),
])
def test_family_learns_on_digits(tmp_path, model_name):
  config = learning_run_config(model_name)
  final = train.train_and_evaluate(config, str(tmp_path))
  losses = run_losses(tmp_path)
  assert losses[-1] < 0.7 * losses[0], losses
  assert final["accuracy"] > 0.3, final  # chance is 0.1

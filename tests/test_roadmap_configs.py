"""configs/convnext_roadmap_digits.py: one recipe for every roadmap step, small and full scale."""

import jax
import jax.numpy as jnp
from flax import nnx

from cnn_jax.models import create_model
from helpers import load_config


def _get_config(file_name: str, arg: str):
  return load_config(file_name[:-3], arg)


def test_full_scale_variant_is_the_convnext_t_recipe_with_a_roadmap_model():
  roadmap = _get_config("convnext_roadmap_digits.py", "3,imagenet").to_dict()
  tiny = _get_config("convnext_imagenet.py", "tiny").to_dict()
  assert roadmap.pop("model") == {**tiny.pop("model"), "name": "convnext_roadmap", "step": 3}
  assert roadmap == tiny


def test_small_scale_steps_differ_only_in_the_model_and_trace_at_the_image_size():
  configs = [_get_config("convnext_roadmap_digits.py", str(step)) for step in (0, 11)]
  rest = [c.to_dict() for c in configs]
  for r in rest:
    r["model"].pop("step")
  assert rest[0] == rest[1]
  for config in configs:
    size = config.data.image_size
    options = {k: v for k, v in config.model.items() if k != "name"}
    logits = jax.eval_shape(
        lambda x, o=options: create_model("convnext_roadmap", rngs=nnx.Rngs(0), **o)(x),
        jax.ShapeDtypeStruct((2, size, size, 1), jnp.float32))
    assert logits.shape == (2, 10)

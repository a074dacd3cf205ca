"""ConvNeXt V1/V2 (cnn_jax/models/convnext.py) and the ResNet-50 -> ConvNeXt-T roadmap
(cnn_jax/models/roadmap.py)."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from cnn_jax.errors import UserError
from cnn_jax.models import convnext, create_model, roadmap
from cnn_jax.models.layers import DropPath, count_params
from helpers import abstract_model as abstract
from helpers import initialized, normal, numpy_filled

# timm 1.0.31: sum(p.numel() for p in timm.create_model(name).parameters()).
TIMM_PARAM_COUNTS = {
    "convnext_tiny": 28_589_128,
    "convnext_small": 50_223_688,
    "convnext_base": 88_591_464,
    "convnext_large": 197_767_336,
    "convnext_xlarge": 350_196_968,
    "convnextv2_atto": 3_708_400,
    "convnextv2_femto": 5_233_240,
    "convnextv2_pico": 9_066_280,
    "convnextv2_nano": 15_623_800,
    "convnextv2_tiny": 28_635_496,
    "convnextv2_base": 88_717_800,
    "convnextv2_large": 197_956_840,
    "convnextv2_huge": 660_289_640,
}
TORCHVISION_RESNET50_PARAMS = 25_557_032
GOLDEN = os.path.join(os.path.dirname(__file__), "fixtures", "convnext_timm_golden.npz")


# Most real forwards share these shapes (32x32x1 inputs, as the digits test), so the per-shape
# compiles of parameter init and eager ops are paid once per test session.
ATTO = dict(num_classes=10, in_channels=1, patch_size=2)


# One compiled program per model structure and mode: far cheaper on CPU than eager op-by-op.
forward = nnx.jit(lambda model, x: model(x))
features = nnx.jit(lambda model, x, mask=None: model.forward_features(x, mask))
both = nnx.jit(lambda model, x: (model.forward_features(x), model(x)))


def param_shapes(model: nnx.Module) -> dict:
  flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
  return {path: tuple(v.shape) for path, v in flat}


@pytest.mark.parametrize("name", sorted(TIMM_PARAM_COUNTS))
def test_param_count_equals_timm(name):
  assert count_params(abstract(name)) == TIMM_PARAM_COUNTS[name]


@pytest.mark.parametrize("name,num_classes", [("convnext_tiny", 1000), ("convnextv2_atto", 10)])
def test_output_shape_at_224(name, num_classes):
  def forward(x):
    model = create_model(name, num_classes=num_classes, rngs=nnx.Rngs(0))
    return model(x), model.forward_features(x)

  logits, features = jax.eval_shape(forward, jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32))
  assert logits.shape == (2, num_classes)
  assert features.shape == (2, 7, 7, abstract(name).num_features)


def test_top_level_children_and_timm_names():
  model = abstract("convnextv2_atto")
  assert model.num_features == 320
  assert len(model.stages) == 4 and model.stages[0].downsample is None
  shapes = param_shapes(model)
  for path, shape in {
      ("stem", "conv", "kernel"): (4, 4, 3, 40),
      ("stem", "norm", "scale"): (40,),
      ("stages", 1, "downsample", "norm", "scale"): (40,),
      ("stages", 1, "downsample", "conv", "kernel"): (2, 2, 40, 80),
      ("stages", 2, "blocks", 5, "conv_dw", "kernel"): (7, 7, 1, 160),
      ("stages", 2, "blocks", 5, "fc1", "kernel"): (160, 640),
      ("stages", 2, "blocks", 5, "grn", "gamma"): (640,),
      ("stages", 2, "blocks", 5, "fc2", "kernel"): (640, 160),
      ("head", "norm", "scale"): (320,),
      ("head", "fc", "kernel"): (320, 1000),
  }.items():
    assert shapes[path] == shape, path
  assert not any("gamma" == p[-1] and "grn" not in p for p in shapes)  # V2: no LayerScale
  v1 = param_shapes(abstract("convnext_tiny"))
  assert v1[("stages", 0, "blocks", 0, "gamma")] == (96,)


TIMM_RENAMES = (("stem.conv", "stem.0"), ("stem.norm", "stem.1"),
                ("downsample.norm", "downsample.0"), ("downsample.conv", "downsample.1"))


def _load_timm(model: nnx.Module, arrays: dict, tag: str) -> None:
  """Copies timm state_dict arrays into `model`, using the renames of the module docstring."""
  flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
  used = set()
  for path, var in flat:
    name = ".".join(map(str, path[:-1]))
    for ours, timm in TIMM_RENAMES:
      name = name.replace(ours, timm)
    name = re.sub(r"\.(fc1|fc2|grn)$", r".mlp.\1", name)
    leaf = path[-1]
    if leaf == "gamma" and not name.endswith("grn"):
      key = f"{tag}/{name}.gamma"  # LayerScale keeps timm's name
    else:
      key = f"{tag}/{name}.{'bias' if leaf in ('bias', 'beta') else 'weight'}"
    a = arrays[key]
    if a.ndim == 4 and len(var.shape) == 2:  # timm conv_mlp: 1x1 conv (out, in, 1, 1)
      a = a[:, :, 0, 0].T
    elif a.ndim == 4:  # OIHW -> HWIO
      a = a.transpose(2, 3, 1, 0)
    elif a.ndim == 2:  # Linear (out, in) -> (in, out)
      a = a.T
    assert a.shape == tuple(var.shape), key
    var.set_value(jnp.asarray(a))
    used.add(key)
  nnx.update(model, nnx.from_flat_state(flat))
  assert used == {k for k in arrays if k.startswith(tag + "/") and k != f"{tag}/logits"}


@pytest.mark.parametrize("tag,kwargs", [("v1", {}), ("v2", dict(grn=True, layer_scale_init=None))])
def test_matches_timm_logits_with_converted_weights(tag, kwargs):
  arrays = dict(np.load(GOLDEN))
  model = nnx.eval_shape(lambda: convnext.ConvNeXt(
      depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), num_classes=5, rngs=nnx.Rngs(0), **kwargs))
  _load_timm(model, arrays, tag)  # fills every leaf: the model is only Params
  model.eval()
  x = jnp.asarray(arrays["input_nchw"].transpose(0, 2, 3, 1))
  logits = forward(model, x)
  np.testing.assert_allclose(logits, arrays[f"{tag}/logits"], atol=1e-4, rtol=1e-4)


def test_real_forward_convnextv2_atto_small_resolution():
  model = create_model("convnextv2_atto", **ATTO, rngs=nnx.Rngs(0))  # real init
  w = model.stages[2].blocks[0].fc1.kernel[...]
  # timm's trunc_normal(std=.02); layers.trunc_normal cuts at +-2 std without rescaling, which
  # leaves a std of 0.88 x 0.02.
  assert float(jnp.std(w)) == pytest.approx(0.02, rel=0.15)
  assert float(jnp.abs(model.stages[2].blocks[0].fc1.bias[...]).max()) == 0.0
  x = normal(1, (2, 32, 32, 1))
  feats, logits = both(model, x)
  assert feats.shape == (2, 2, 2, 320)
  assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))


def test_drop_path_active_in_train_identity_in_eval():
  model = numpy_filled(abstract("convnextv2_atto", **ATTO, depths=(1, 1, 1, 1),
                               drop_path_rate=0.6), std=0.05)
  rates = [m.rate for _, m in model.iter_modules() if isinstance(m, DropPath)]
  assert rates == pytest.approx([0.0, 0.2, 0.4, 0.6])  # linear over blocks (timm)
  x = normal(1, (4, 32, 32, 1))
  train_a, train_b = forward(model, x), forward(model, x)
  assert not np.allclose(train_a, train_b)  # fresh drop masks each call
  model.eval()
  eval_out = forward(model, x)
  np.testing.assert_array_equal(eval_out, forward(model, x))
  for _, m in model.iter_modules():  # rate 0 in train mode is the reference identity
    if isinstance(m, DropPath):
      m.rate = 0.0
  model.train()
  np.testing.assert_allclose(forward(model, x), eval_out, atol=1e-6)


def test_roadmap_ends_at_convnext_tiny_and_starts_at_resnet50():
  last = abstract("convnext_roadmap")
  tiny = abstract("convnext_tiny")
  assert count_params(last) == TIMM_PARAM_COUNTS["convnext_tiny"]
  assert param_shapes(last) == param_shapes(tiny)
  first = count_params(abstract("convnext_roadmap", step=0))
  assert abs(first - 25.6e6) / 25.6e6 < 0.01
  # Without the recipe's LayerScale, step 0 is exactly torchvision's ResNet-50.
  bare = abstract("convnext_roadmap", step="resnet50", layer_scale_init=None)
  assert count_params(bare) == TORCHVISION_RESNET50_PARAMS
  assert param_shapes(bare)[("stem", "conv", "kernel")] == (7, 7, 3, 64)


@pytest.mark.parametrize("step", range(len(roadmap.ROADMAP_STEPS)))
def test_every_roadmap_step_builds_and_traces(step):
  def run(x):  # shallow, so the trace is fast; shapes are checked, nothing is computed
    model = create_model("convnext_roadmap", step=step, depths=(1, 1, 1, 1), num_classes=7,
                         rngs=nnx.Rngs(0))
    return model(x), model.forward_features(x)

  logits, feats = jax.eval_shape(run, jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32))
  assert logits.shape == (2, 7)
  assert feats.shape == (2, 2, 2, 2048 if step < 3 else 3072 if step == 3 else 768)
  if step:
    before, after = roadmap.roadmap_config(step - 1), roadmap.roadmap_config(step)
    assert before != after


@pytest.mark.parametrize("step", [0, 3, 4, 11])
def test_roadmap_width_narrows_every_width_in_proportion(step):
  # One shallow model per block family: ResNet bottleneck, ResNeXt, inverted, ConvNeXt.
  full = param_shapes(abstract("convnext_roadmap", step=step, depths=(1, 1, 1, 1)))
  narrow = param_shapes(abstract("convnext_roadmap", step=step, depths=(1, 1, 1, 1),
                                 width=0.25))
  assert full.keys() == narrow.keys()
  fixed = {3, 1000}  # input channels, classes
  for path, shape in full.items():
    if path[-1] == "kernel" and len(shape) == 4:  # spatial taps (and depthwise's 1) stay
      assert narrow[path][:2] == shape[:2], path
      shape, got = shape[2:], narrow[path][2:]
    else:
      got = narrow[path]
    for f, n in zip(shape, got):
      assert n == (f if f in fixed or f == 1 else f // 4), (path, shape, got)
  for stage in range(4):  # hidden widths follow: ratio 1/4 before step 4, 4 after
    fc1 = ("stages", stage, "blocks", 0, "fc1", "kernel")
    assert narrow[fc1][1] == full[fc1][1] // 4 and narrow[fc1][1] >= 4
  assert roadmap.roadmap_config(step, 1.0) == roadmap.roadmap_config(step)


def test_roadmap_width_must_give_whole_widths():
  assert roadmap.roadmap_config(0, 0.125)["stem_dim"] == 8
  with pytest.raises(UserError, match="whole positive"):
    create_model("convnext_roadmap", step=4, width=0.1, rngs=nnx.Rngs(0))  # 9.6 channels


def test_roadmap_step_forward_and_options():
  # step 0 (BN, ResNet stem, in-block downsampling, projection shortcuts) really runs, in
  # both modes; narrowed so the check stays cheap.
  model = numpy_filled(abstract("convnext_roadmap", step=0, num_classes=3, depths=(1, 2, 1, 1),
                               dims=(32, 64, 128, 256), stem_dim=16), std=0.05)
  x = normal(0, (2, 32, 32, 3))
  stats = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
  train = forward(model, x)
  assert train.shape == (2, 3) and bool(jnp.all(jnp.isfinite(train)))
  moved = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
  assert not all(np.allclose(a, b)  # train mode updates the running statistics
                 for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(moved)))
  model.eval()
  assert forward(model, x).shape == (2, 3)
  # the kernel-size sweep of step 6 is a keyword override
  k9 = abstract("convnext_roadmap", step="kernel_7", kernel_size=9)
  assert param_shapes(k9)[("stages", 0, "blocks", 0, "conv_dw", "kernel")] == (9, 9, 1, 96)
  with pytest.raises(UserError, match="roadmap step"):
    create_model("convnext_roadmap", step="nope", rngs=nnx.Rngs(0))
  with pytest.raises(UserError, match="num_norms"):
    create_model("convnext_tiny", num_norms="two", rngs=nnx.Rngs(0))


def test_bad_image_size_and_small_image_options():
  model = abstract("convnextv2_atto", num_classes=10, depths=(1, 1, 1, 1))
  with pytest.raises(ValueError, match="not divisible by the total stride 32"):
    jax.eval_shape(model, jax.ShapeDtypeStruct((1, 40, 40, 3), jnp.float32))

  def logits_shape(size, **kw):
    def f(x):
      return create_model("convnextv2_atto", num_classes=10, depths=(1, 1, 1, 1),
                          rngs=nnx.Rngs(0), **kw)(x)
    return jax.eval_shape(f, jax.ShapeDtypeStruct((1, size, size, 1), jnp.float32)).shape

  assert logits_shape(32, patch_size=1, in_channels=1) == (1, 10)
  assert logits_shape(32, patch_size=2, in_channels=1) == (1, 10)
  assert logits_shape(28, patch_size=1, pad_input=2, in_channels=1) == (1, 10)
  with pytest.raises(ValueError, match="total stride 8"):
    logits_shape(28, patch_size=1, in_channels=1)


def test_mask_of_ones_equals_no_mask_and_masked_positions_stay_zero():
  model = create_model("convnextv2_atto", **ATTO, depths=(1, 1, 1, 1), rngs=nnx.Rngs(0))
  x = normal(0, (2, 32, 32, 1))
  ones = jnp.ones((2, 2, 2, 1))
  np.testing.assert_allclose(features(model, x, ones), features(model, x), atol=1e-6)
  mask = ones.at[:, 0, 0].set(0.0)
  masked = features(model, x, mask)
  assert float(jnp.abs(masked[:, 0, 0]).max()) == 0.0
  assert float(jnp.abs(masked[:, 1, 1]).min()) > 0.0


def test_remat_bf16_and_head_init_scale():
  # remat is per block inside Stage; one stage (atto's second, whose parameter shapes are
  # already compiled) keeps the two backward compiles cheap.
  cfg = convnext.BlockConfig(grn=True, layer_scale_init=0.5)
  x = normal(0, (2, 8, 8, 40))

  def stage(remat):
    return initialized(lambda rngs: convnext.Stage(
        40, 80, 2, 2, cfg, downsample="separate", drop_path_rates=(0.0, 0.0), remat=remat,
        dtype=None, param_dtype=jnp.float32, rngs=rngs))

  @nnx.jit
  def grads(module):
    return nnx.grad(lambda m: jnp.sum(m(x) ** 2))(module)

  for a, b in zip(jax.tree.leaves(grads(stage(False))), jax.tree.leaves(grads(stage(True)))):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
  assert all(s.remat for s in abstract("convnextv2_atto", remat=True).stages)

  def half(x):
    model = create_model("convnextv2_atto", **ATTO, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    return model(x), nnx.state(model, nnx.Param)

  logits, params = jax.eval_shape(half, jax.ShapeDtypeStruct((2, 32, 32, 1), jnp.float32))
  assert logits.dtype == jnp.bfloat16
  assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype("float32")}

  plain = create_model("convnextv2_atto", **ATTO, depths=(1, 1, 1, 1), rngs=nnx.Rngs(0))
  scaled = create_model("convnextv2_atto", **ATTO, depths=(1, 1, 1, 1), head_init_scale=1e-3,
                        rngs=nnx.Rngs(0))
  ratio = jnp.std(scaled.head.fc.kernel[...]) / jnp.std(plain.head.fc.kernel[...])
  assert float(ratio) == pytest.approx(1e-3, rel=1e-4)


def test_convnextv2_atto_small_image_learns_digits():
  from sklearn.datasets import load_digits

  digits = load_digits()
  images = digits.images[:256].astype(np.float32) / 16.0
  images = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)[..., None]  # 8x8 -> 16x16
  x, y = jnp.asarray(images), jnp.asarray(digits.target[:256])
  # Stages at 8, 4, 2, 1 px; one block each: the train step's compile grows with the blocks.
  model = create_model("convnextv2_atto", **ATTO, depths=(1, 1, 1, 1), rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adamw(2e-3, weight_decay=0.05), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, xb, yb):
    def loss_fn(m):
      return optax.softmax_cross_entropy_with_integer_labels(m(xb), yb).mean()
    loss, g = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, g)
    return loss

  losses = [float(step(model, optimizer, x[i:i + 32], y[i:i + 32]))
            for _ in range(2) for i in range(0, 256, 32)]
  assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4]), losses

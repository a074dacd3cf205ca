"""ResNet / plain nets (He et al. 2016): sizes, shapes, modes, options (AlexNet's tests are in
test_models_alexnet.py).

Big models are only ever built abstractly (nnx.eval_shape) and run through jax.eval_shape,
so this file allocates no ImageNet-sized weights; real forwards use the CIFAR nets.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cnn_jax.errors import UserError
from cnn_jax.models import create_model, get_constructor, list_models
from cnn_jax.models.layers import ACTIVATIONS, count_params
from cnn_jax.models.resnet import BasicBlock, Bottleneck, ResNet
from helpers import initialized, normal

# torchvision's own counts (and REFERENCE.md).
IMAGENET_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}

# CIFAR nets, 10 classes, BN affine parameters counted. Per n (blocks per stage):
# stem 3*9*16 + 2*16 = 464; stage 1: 2n convs of 16*16*9 + 32 = 2336;
# stage 2: 16*32*9 + 64 = 4672, then 2n-1 of 32*32*9 + 64 = 9280;
# stage 3: 32*64*9 + 128 = 18560, then 2n-1 of 64*64*9 + 128 = 36992; fc 64*10 + 10 = 650.
# Total 97216 n - 21926 with option A (parameter-free shortcuts).
# Option B adds two 1x1 projections + BN: 16*32 + 64 + 32*64 + 128 = 2752.
# (272,474 / 466,906 / 661,338 / 855,770 / 1,730,714, often quoted for "option A", are the option-B
# counts; akamaster/pytorch_resnet_cifar10 with option A prints 269,722 for ResNet-20.)
CIFAR_N = {"20": 3, "32": 5, "44": 7, "56": 9, "110": 18}
OPTION_B_EXTRA = 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64


def cifar_params(n: int) -> int:
  stem, fc = 3 * 9 * 16 + 2 * 16, 64 * 10 + 10
  stage1 = 2 * n * (16 * 16 * 9 + 2 * 16)
  stage2 = (16 * 32 * 9 + 2 * 32) + (2 * n - 1) * (32 * 32 * 9 + 2 * 32)
  stage3 = (32 * 64 * 9 + 2 * 64) + (2 * n - 1) * (64 * 64 * 9 + 2 * 64)
  return stem + stage1 + stage2 + stage3 + fc


CIFAR_PARAMS_A = {
    "resnet20": 269_722, "resnet32": 464_154, "resnet44": 658_586, "resnet56": 853_018,
    "resnet110": 1_727_962,
}
CIFAR_PARAMS_B = {
    "resnet20": 272_474, "resnet32": 466_906, "resnet44": 661_338, "resnet56": 855_770,
    "resnet110": 1_730_714,
}

# ImageNet plain twins lose the three projection shortcuts of ResNet-18/34:
# (64*128 + 2*128) + (128*256 + 2*256) + (256*512 + 2*512) = 173,824.
IMAGENET_PROJECTIONS_BASIC = 8_448 + 33_280 + 132_096


@functools.lru_cache(maxsize=None)
def abstract(name: str, **kwargs) -> nnx.Module:
  """The model with ShapeDtypeStructs for arrays: free to build, even for ResNet-152."""
  return nnx.eval_shape(lambda: create_model(name, rngs=nnx.Rngs(0), **kwargs))


def abstract_apply(model: nnx.Module, shape: tuple[int, ...], *, method: str = "__call__",
                   dtype=jnp.float32) -> jax.ShapeDtypeStruct:
  graphdef, state = nnx.split(model)
  return jax.eval_shape(lambda s, x: getattr(nnx.merge(graphdef, s), method)(x), state,
                        jax.ShapeDtypeStruct(shape, dtype))


@nnx.jit
def forward(model: nnx.Module, x: jax.Array) -> jax.Array:
  return model(x)


def tiny_resnet(**kwargs) -> ResNet:
  """Two one-block stages with a projection shortcut: cheap to compile, all code paths.
  Its initialisers compile as one program, as create_model's do."""
  return initialized(lambda rngs: ResNet("basic", (1, 1), (16, 32), stem="small",
                                         stem_width=16, num_classes=10, rngs=rngs, **kwargs),
                     0, dropout=1)


# ---------------------------------------------------------------------------------------------
# Sizes


def test_all_variants_registered():
  expected = {"plain18", "plain34"} | {f"resnet{d}" for d in (18, 34, 50, 101, 152)}
  expected |= {f"{k}{d}" for k in ("resnet", "plain") for d in CIFAR_N}
  assert expected <= set(list_models())


@pytest.mark.parametrize("name", sorted(IMAGENET_PARAMS))
def test_imagenet_param_counts(name):
  assert count_params(abstract(name)) == IMAGENET_PARAMS[name]


@pytest.mark.parametrize("depth", sorted(CIFAR_N, key=int))
def test_cifar_param_counts(depth):
  n = CIFAR_N[depth]
  assert cifar_params(n) == CIFAR_PARAMS_A[f"resnet{depth}"]
  assert cifar_params(n) + OPTION_B_EXTRA == CIFAR_PARAMS_B[f"resnet{depth}"]
  assert count_params(abstract(f"resnet{depth}")) == CIFAR_PARAMS_A[f"resnet{depth}"]


# The option-B and plain counts follow from the same code for every depth; two depths suffice.
@pytest.mark.parametrize("depth", ["20", "110"])
def test_cifar_option_b_param_counts(depth):
  assert count_params(abstract(f"resnet{depth}", shortcut="B")) == CIFAR_PARAMS_B[f"resnet{depth}"]


@pytest.mark.parametrize("depth", ["20", "56"])
def test_cifar_plain_param_counts(depth):
  # Option A shortcuts have no parameters, so the plain twin is exactly as large.
  assert count_params(abstract(f"plain{depth}")) == CIFAR_PARAMS_A[f"resnet{depth}"]


def projection_params(model: ResNet) -> int:
  return sum(count_params(block.downsample) for stage in model.stages for block in stage
             if block.downsample is not None)


@pytest.mark.parametrize("depth", [18, 34])
def test_imagenet_plain_twin_is_resnet_minus_projections(depth):
  resnet, plain = abstract(f"resnet{depth}"), abstract(f"plain{depth}")
  assert projection_params(resnet) == IMAGENET_PROJECTIONS_BASIC
  assert projection_params(plain) == 0
  assert count_params(plain) == count_params(resnet) - IMAGENET_PROJECTIONS_BASIC
  assert all(block.downsample is None and not block.residual
             for stage in plain.stages for block in stage)


def test_cifar_option_b_adds_exactly_two_projections():
  a, b = abstract("resnet20"), abstract("resnet20", shortcut="B")
  assert projection_params(a) == 0
  assert projection_params(b) == OPTION_B_EXTRA == count_params(b) - count_params(a)
  # Stage 2 and 3 open with a shape change; every other shortcut is the identity.
  shortcuts = [type(block.downsample).__name__ for stage in b.stages for block in stage]
  assert shortcuts.count("Projection") == 2 and shortcuts.count("NoneType") == 7


# ---------------------------------------------------------------------------------------------
# Shapes


@pytest.mark.parametrize("name", [
    "resnet18", "resnet34", "resnet50", "plain18", "plain34",
    # Only deeper stacks of resnet50's blocks, and the slowest to trace (~2-5 s each).
    pytest.param("resnet101", marks=pytest.mark.slow),
    pytest.param("resnet152", marks=pytest.mark.slow)])
def test_imagenet_output_shape_at_224(name):
  out = abstract_apply(abstract(name), (2, 224, 224, 3))
  assert out.shape == (2, 1000) and out.dtype == jnp.float32


@pytest.mark.parametrize("name,channels", [("resnet18", 512), ("resnet50", 2048)])
def test_forward_features_and_children(name, channels):
  model = abstract(name)
  assert model.num_features == channels and model.default_image_size == 224
  feats = abstract_apply(model, (2, 224, 224, 3), method="forward_features")
  assert feats.shape == (2, 7, 7, channels)
  children = {child for child, _ in nnx.iter_children(model)}
  assert children == {"stem", "layer1", "layer2", "layer3", "layer4", "fc"}


def test_cifar_forward_features():
  model = abstract("resnet56")
  assert model.num_features == 64 and model.default_image_size == 32
  assert abstract_apply(model, (2, 32, 32, 3), method="forward_features").shape == (2, 8, 8, 64)
  assert abstract_apply(model, (2, 32, 32, 3)).shape == (2, 10)
  assert {child for child, _ in nnx.iter_children(model)} == {
      "stem", "layer1", "layer2", "layer3", "fc"}


@pytest.mark.parametrize("name,kwargs", [("resnet20", {}), ("resnet20", {"shortcut": "B"}),
                                         ("plain20", {})])
def test_cifar_real_forward(name, kwargs):
  model = create_model(name, rngs=nnx.Rngs(0), **kwargs)
  model.eval()
  y = forward(model, normal(0, (2, 32, 32, 3)))
  assert y.shape == (2, 10)
  assert bool(jnp.all(jnp.isfinite(y)))


def test_small_stem_for_mnist_sized_inputs():
  model = abstract("resnet18", small_stem=True, in_channels=1, num_classes=10)
  assert model.stem.kind == "small" and model.min_size == 8 and model.default_image_size == 32
  assert abstract_apply(model, (2, 28, 28, 1), method="forward_features").shape == (2, 4, 4, 512)
  assert abstract_apply(model, (2, 28, 28, 1)).shape == (2, 10)
  # Same parameter count as resnet18 except the 3x3x1 stem conv (vs 7x7x3) and the fc.
  expected = IMAGENET_PARAMS["resnet18"] - 7 * 7 * 3 * 64 + 3 * 3 * 1 * 64 - 990 * 513
  assert count_params(model) == expected


# ---------------------------------------------------------------------------------------------
# Bad inputs


@pytest.mark.parametrize("name,kwargs,shape", [
    ("resnet20", {}, (1, 30, 30, 3)),          # not a multiple of 4
    ("resnet20", {}, (1, 32, 34, 3)),
    ("plain56", {}, (1, 2, 2, 3)),
    ("resnet18", {}, (1, 28, 28, 3)),          # needs small_stem below 32 px
    ("resnet50", {}, (1, 224, 16, 3)),
    ("resnet18", {"small_stem": True}, (1, 4, 4, 3)),
    ("resnet18", {}, (1, 224, 224, 1)),        # wrong channel count
])
def test_bad_input_raises_value_error(name, kwargs, shape):
  with pytest.raises(ValueError, match="image size|expects NHWC|at least"):
    abstract_apply(abstract(name, **kwargs), shape)


@pytest.mark.parametrize("name,kwargs", [
    ("resnet18", {"activation": "swish"}),
    ("resnet20", {"shortcut": "C"}),
    ("plain20", {"zero_init_last_bn": True}),
    ("resnet50", {"drop_path_rate": 1.0}),
])
def test_bad_options_raise_value_error(name, kwargs):
  with pytest.raises(ValueError):
    nnx.eval_shape(lambda: get_constructor(name)(rngs=nnx.Rngs(0), **kwargs))
  # Through the registry they become one-line user errors.
  with pytest.raises(UserError, match=name):
    abstract(name, **kwargs)


def test_cifar_nets_have_no_small_stem_option():
  with pytest.raises(UserError, match="small_stem"):
    abstract("resnet20", small_stem=True)


# ---------------------------------------------------------------------------------------------
# Modes, init and options


def test_batchnorm_train_vs_eval():
  model = create_model("resnet20", rngs=nnx.Rngs(0))
  bn = model.layer2[0].bn1
  assert bn.momentum == pytest.approx(0.9) and bn.epsilon == pytest.approx(1e-5)
  x = normal(0, (2, 32, 32, 3)) * 2.0 + 1.0
  mean0, var0 = np.asarray(bn.mean[...]), np.asarray(bn.var[...])

  model.eval()
  y_eval = forward(model, x)
  np.testing.assert_array_equal(bn.mean[...], mean0)
  np.testing.assert_array_equal(bn.var[...], var0)

  model.train()
  y_train = forward(model, x)
  assert not np.allclose(bn.mean[...], mean0) and not np.allclose(bn.var[...], var0)
  assert not np.allclose(y_train, y_eval, atol=1e-3)
  # torch momentum 0.1: the running mean moved a tenth of the way from 0 to the batch mean.
  conv_out = jax.jit(lambda conv, x: conv(x))(model.stem.conv1, x)
  np.testing.assert_allclose(model.stem.bn1.mean[...], 0.1 * conv_out.mean(axis=(0, 1, 2)),
                             rtol=1e-4, atol=1e-6)

  # Back in eval mode the (now updated) running stats are used and left alone.
  model.eval()
  mean1 = np.asarray(bn.mean[...])
  y_eval2 = forward(model, x)
  np.testing.assert_array_equal(bn.mean[...], mean1)
  assert not np.allclose(y_eval2, y_eval, atol=1e-6)


@pytest.mark.parametrize("block_cls,cin,planes", [(BasicBlock, 16, 16), (Bottleneck, 64, 16)])
def test_zero_init_last_bn_makes_block_identity_plus_relu(block_cls, cin, planes):
  block = initialized(lambda rngs: block_cls(cin, planes, zero_init_last_bn=True, rngs=rngs))
  x = normal(0, (2, 8, 8, cin))
  np.testing.assert_allclose(forward(block, x), nnx.relu(x), atol=1e-6)  # train mode
  block.eval()
  np.testing.assert_allclose(forward(block, x), nnx.relu(x), atol=1e-6)
  # Without the option the block is far from the identity.
  default = initialized(lambda rngs: block_cls(cin, planes, rngs=rngs))
  default.eval()
  assert not np.allclose(forward(default, x), nnx.relu(x), atol=1e-2)


def test_zero_init_last_bn_reaches_every_block():
  model = create_model("resnet20", rngs=nnx.Rngs(0), zero_init_last_bn=True)
  blocks = [block for stage in model.stages for block in stage]
  assert all(not np.any(block.bn2.scale[...]) for block in blocks)
  assert all(np.all(block.bn1.scale[...] == 1) for block in blocks)
  # A downsampling block starts as relu(shortcut(x)), here option A's padded subsample.
  block = model.layer2[0]
  x = nnx.relu(normal(0, (2, 16, 16, 16)))
  np.testing.assert_allclose(forward(block, x), nnx.relu(block.downsample(x)), atol=1e-6)


def test_torchvision_init():
  model = create_model("resnet20", rngs=nnx.Rngs(0))
  kernel = np.asarray(model.layer3[1].conv1.kernel[...])
  # kaiming_normal_(mode="fan_out"): std = sqrt(2 / (3 * 3 * 64)), not truncated.
  assert kernel.std() == pytest.approx(np.sqrt(2 / 576), rel=0.03)
  assert np.abs(kernel).max() > 2.5 * np.sqrt(2 / 576)
  # nn.Linear default: U(+-1/sqrt(fan_in)) for weight and bias.
  bound = 1 / np.sqrt(64)
  assert np.abs(model.fc.kernel[...]).max() <= bound
  assert np.abs(model.fc.bias[...]).max() <= bound and np.any(model.fc.bias[...])


def test_drop_path_rates_rise_linearly():
  model = abstract("resnet20", drop_path_rate=0.4)
  rates = [block.drop_path.rate for stage in model.stages for block in stage]
  np.testing.assert_allclose(rates, np.linspace(0.0, 0.4, 9))
  plain = abstract("plain20", drop_path_rate=0.4)
  assert all(block.drop_path.rate == 0.0 for stage in plain.stages for block in stage)


def test_drop_path_is_random_in_train_and_off_in_eval():
  model = tiny_resnet(drop_path_rate=0.5)
  x = normal(0, (8, 8, 8, 3))
  # Same batch, so BN's batch statistics agree: only the dropped samples differ.
  first, second = forward(model, x), forward(model, x)
  assert not np.allclose(first, second)
  model.eval()
  assert all(block.drop_path.deterministic for stage in model.stages for block in stage)


def test_remat_matches_plain_call():
  def loss(model, x):
    return jnp.mean(model(x) ** 2)

  grad_fn = nnx.jit(nnx.grad(loss))
  x = normal(0, (4, 8, 8, 3))
  reference, remat = tiny_resnet(drop_path_rate=0.3), tiny_resnet(drop_path_rate=0.3, remat=True)
  g_ref, g_remat = grad_fn(reference, x), grad_fn(remat, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               nnx.state(g_ref), nnx.state(g_remat))
  # BN statistics and the DropPath rng counter advance inside the rematerialised blocks too.
  np.testing.assert_allclose(remat.layer2[0].bn2.mean[...], reference.layer2[0].bn2.mean[...],
                             rtol=1e-5, atol=1e-6)
  assert np.any(remat.layer2[0].bn2.mean[...])
  assert int(remat.layer2[0].drop_path.rngs.count[...]) == 1


def test_bfloat16_compute_float32_params():
  model = abstract("resnet20", dtype=jnp.bfloat16)
  assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype("float32")}
  y = abstract_apply(model, (2, 32, 32, 3))
  assert y.dtype == jnp.bfloat16 and y.shape == (2, 10)


def test_activation_option():
  for act in ("relu", "tanh", "sigmoid", "gelu", "gelu_tanh"):
    model = nnx.eval_shape(lambda: tiny_resnet(activation=act))
    block = model.layer2[0]
    assert model.stem.act is block.act is ACTIVATIONS[act]
  x = normal(0, (2, 8, 8, 3))
  relu, tanh = tiny_resnet(), tiny_resnet(activation="tanh")
  relu.eval()
  tanh.eval()
  assert not np.allclose(forward(relu, x), forward(tanh, x))

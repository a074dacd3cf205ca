"""layers.conv_general_dilated's CPU forms (cnn_jax/models/cpu_ops.py: depthwise by shifts,
1x1 and patchify convs by matmul, few-channel convs by taps, strided convs' input gradients
by phases, other stride-1 convs' kernel gradients from copies, max pool by strided views)
compute the XLA ops: same values and gradients, same parameters, same MAC count."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cnn_jax import summary
from cnn_jax.models import cpu_ops, layers
from helpers import abstract_model, normal, numpy_filled

# (kernel, stride, groups, padding, rewritten?)
CASES = [
    (7, 1, "depthwise", ((3, 3), (3, 3)), True),
    (3, 1, "depthwise", ((1, 1), (1, 1)), True),
    (1, 1, 1, ((0, 0), (0, 0)), True),
    (1, 2, 1, "VALID", True),
    (4, 4, 1, "VALID", True),
    (2, 2, 1, ((0, 0), (0, 0)), True),
    (3, 1, 1, ((1, 1), (1, 1)), False),   # XLA's forward (only its kernel gradient differs)
    (3, 2, "depthwise", ((1, 1), (1, 1)), False),
]


def _conv_pair(kernel, stride, groups, padding, channels=12, out=8, size=(2, 11, 13)):
  in_ch = channels
  groups = in_ch if groups == "depthwise" else groups
  out = in_ch if groups == in_ch else out
  x = normal(0, (*size, in_ch))
  w = normal(1, (kernel, kernel, in_ch // groups, out))

  def run(impl):
    def f(x, w):
      with layers.conv_impl(impl):
        return layers.conv_general_dilated(
            x, w, (stride, stride), padding,
            dimension_numbers=jax.lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1),
                                                           (0, 3, 1, 2)),
            feature_group_count=groups, precision=jax.lax.Precision.HIGHEST)
    y, vjp = jax.vjp(f, x, w)
    dx, dw = vjp(jnp.cos(y))
    return y, dx, dw, jax.make_jaxpr(f)(x, w)

  return run("xla"), run("rewrite")


@pytest.mark.parametrize("kernel,stride,groups,padding,rewritten", CASES)
def test_rewrite_equals_xla_conv_in_values_and_gradients(kernel, stride, groups, padding,
                                                         rewritten):
  (y_ref, dx_ref, dw_ref, jaxpr_ref), (y, dx, dw, jaxpr) = _conv_pair(kernel, stride, groups,
                                                                      padding)
  assert y.shape == y_ref.shape
  for got, want in ((y, y_ref), (dx, dx_ref), (dw, dw_ref)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  uses_conv = "conv_general_dilated" in str(jaxpr)
  assert "conv_general_dilated" in str(jaxpr_ref)
  assert uses_conv != rewritten


# Stride-1 convs of few input channels (`cpu_ops.conv_by_taps`): one channel (its own forward),
# several (XLA's forward), square and uneven padding, a kernel wider than tall.
@pytest.mark.parametrize("channels,kernel_hw,padding", [
    (1, (5, 5), ((0, 0), (0, 0))),
    (1, (3, 3), ((1, 1), (1, 1))),
    (3, (3, 3), ((1, 1), (1, 1))),
    (6, (5, 5), "VALID"),
    (2, (2, 3), ((0, 1), (2, 0))),
])
def test_few_channel_conv_equals_xla_conv_in_values_and_gradients(channels, kernel_hw, padding):
  x = normal(0, (9, 11, 13, channels))
  w = normal(1, (*kernel_hw, channels, 5))

  def run(impl):
    def f(x, w):
      with layers.conv_impl(impl):
        return layers.conv_general_dilated(x, w, (1, 1), padding,
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                           precision=jax.lax.Precision.HIGHEST)
    y, vjp = jax.jit(lambda x, w: jax.vjp(f, x, w))(x, w)
    return (y, *vjp(jnp.cos(y))), str(jax.make_jaxpr(f)(x, w))

  (y_ref, dx_ref, dw_ref), jaxpr_ref = run("xla")
  (y, dx, dw), jaxpr = run("rewrite")
  assert y.shape == y_ref.shape
  for got, want in ((y, y_ref), (dx, dx_ref), (dw, dw_ref)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(want))))
  assert "custom_vjp_call" in jaxpr and "custom_vjp_call" not in jaxpr_ref


@pytest.mark.parametrize("channels", [1, 6, cpu_ops.FEW_CHANNELS + 4])
def test_cpu_forms_of_stride_1_convs_in_bfloat16_are_as_close_to_float32_as_xlas(channels):
  """Their sums run in float32 as XLA's conv accumulates, so both round alike to bfloat16: the
  few-channel form (1, 6) and the kernel gradient from copies (more channels)."""
  x = normal(0, (8, 14, 14, channels))
  w = normal(1, (5, 5, channels, 16))

  def run(impl, dtype):
    def f(x, w):
      with layers.conv_impl(impl):
        return layers.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y, vjp = jax.vjp(f, x.astype(dtype), w.astype(dtype))
    return [a.astype(jnp.float32) for a in (y, *vjp(jnp.cos(y)))], y.dtype

  exact, _ = run("xla", jnp.float32)
  (xla, xla_dtype), (form, form_dtype) = run("xla", jnp.bfloat16), run("rewrite", jnp.bfloat16)
  assert form_dtype == xla_dtype == jnp.bfloat16
  for got, want, ref in zip(form, xla, exact):
    scale = float(np.max(np.abs(ref)))
    assert float(np.max(np.abs(got - ref))) <= 1.5 * float(np.max(np.abs(want - ref))) + 1e-6 * scale


# Convs larger than their stride (`cpu_ops.strided_conv_by_phases`): ResNet's 3x3/2, a 7x7/2
# stem, AlexNet's 11x11/4, a stride that does not divide the kernel, uneven and no padding, on
# maps whose size the stride does not divide.
@pytest.mark.parametrize("kernel,stride,padding,size", [
    (3, 2, ((1, 1), (1, 1)), (2, 11, 13)),
    (7, 2, ((3, 3), (3, 3)), (2, 17, 16)),
    (11, 4, ((2, 2), (2, 2)), (2, 35, 33)),
    (5, 3, ((2, 2), (2, 2)), (2, 12, 13)),
    (3, 2, ((0, 1), (1, 0)), (2, 10, 9)),
    (3, 2, ((0, 0), (0, 0)), (2, 12, 12)),
])
def test_strided_conv_by_phases_equals_xla_conv_in_values_and_gradients(kernel, stride, padding,
                                                                        size):
  (y_ref, dx_ref, dw_ref, _), (y, dx, dw, jaxpr) = _conv_pair(kernel, stride, 1, padding,
                                                              channels=5, out=6, size=size)
  assert "custom_vjp_call" in str(jaxpr)
  for got, want in ((y, y_ref), (dx, dx_ref), (dw, dw_ref)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# Stride-1 convs of more channels (`cpu_ops.conv_with_copied_kernel_gradient`): ResNet's 3x3,
# a 5x5 with uneven padding, a kernel wider than tall, no padding, maps of odd sizes.
@pytest.mark.parametrize("kernel_hw,padding,size", [
    ((3, 3), ((1, 1), (1, 1)), (4, 8, 8)),
    ((5, 5), ((0, 2), (3, 1)), (3, 9, 7)),
    ((2, 3), ((1, 0), (0, 2)), (2, 6, 11)),
    ((3, 3), "VALID", (2, 7, 9)),
])
def test_conv_with_copied_kernel_gradient_equals_xla_conv(kernel_hw, padding, size):
  channels = cpu_ops.FEW_CHANNELS + 4
  x = normal(3, (*size, channels))
  w = normal(4, (*kernel_hw, channels, 7))

  def run(impl):
    def f(x, w):
      with layers.conv_impl(impl):
        return layers.conv_general_dilated(x, w, (1, 1), padding,
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y, vjp = jax.jit(lambda x, w: jax.vjp(f, x, w))(x, w)
    return (y, *vjp(jnp.cos(y))), str(jax.make_jaxpr(f)(x, w))

  (y_ref, dx_ref, dw_ref), jaxpr_ref = run("xla")
  (y, dx, dw), jaxpr = run("rewrite")
  assert "name=conv_with_copied_kernel_gradient" in jaxpr and "custom_vjp" not in jaxpr_ref
  for got, want in ((y, y_ref), (dx, dx_ref), (dw, dw_ref)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(want))))


# Narrowed models keep every rewritten op of their family at a fraction of the compile time:
# ResNet-18's ImageNet stem (7x7/2 conv, 3x3/2 max pool) and strided 1x1 projections with one
# block per stage; ConvNeXt V2's patchify stem, 7x7 depthwise and 2x2 downsampling.
@pytest.mark.parametrize("name,overrides", [
    ("resnet18", {"depths": (1, 1, 1, 1), "widths": (16, 32, 64, 128), "stem_width": 16}),
    ("convnextv2_atto", {"dims": (8, 16, 24, 32), "depths": (1, 1, 2, 1)}),
    ("lenet5", {"in_channels": 1}),  # few-channel convs and max pools
    ("resnet20", {}),  # a few-channel stem
])
def test_models_give_the_same_logits_and_gradients_either_way(name, overrides):
  if name == "resnet18":  # resnet18's own layers, fewer and narrower
    from cnn_jax.models.resnet import ResNet
    model = nnx.eval_shape(lambda: ResNet("basic", num_classes=10, rngs=nnx.Rngs(0),
                                          **overrides))
  else:
    model = abstract_model(name, num_classes=10, **overrides)
  model = numpy_filled(model)
  # Eval mode: batch statistics of a 2-image batch on 1x1 maps would amplify rounding.
  model.eval()
  graphdef, state = nnx.split(model)
  x = normal(1, (2, 32, 32, overrides.get("in_channels", 3)))

  def loss(state, impl):
    with layers.conv_impl(impl):
      logits = nnx.merge(graphdef, state)(x)
    return jnp.sum(jnp.sin(logits)), logits

  grad_fn = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
  (_, logits_ref), grads_ref = grad_fn(state, "xla")
  (_, logits), grads = grad_fn(state, "rewrite")
  np.testing.assert_allclose(logits, logits_ref, rtol=1e-4, atol=1e-5)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
    # Summation order differs (matmul vs conv), so compare on the scale of each gradient.
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.max(np.abs(want))))


def test_summary_counts_conv_macs_whatever_the_default_impl():
  with layers.conv_impl("rewrite"):
    rewritten = summary.summarize("convnextv2_atto", image_size=64)
  plain = summary.summarize("convnextv2_atto", image_size=64)
  assert rewritten["macs"] == plain["macs"] > 0


# 2x2 windows of stride 2 on even sides tile the input (their gradient is interleaved); on odd
# sides they do not.
@pytest.mark.parametrize("window,stride,padding,size", [
    (3, 2, 0, (13, 11)), (3, 2, 1, (13, 11)), (2, 2, 0, (12, 10)), (2, 2, 0, (13, 11))])
def test_max_pool_by_slices_equals_reduce_window(window, stride, padding, size):
  x = normal(2, (2, *size, 5))  # no ties: gradients are unique

  def run(impl):
    def f(x):
      with layers.conv_impl(impl):
        return layers.max_pool(x, window, stride, padding)
    y, vjp = jax.vjp(f, x)
    dy = normal(3, y.shape)
    return y, vjp(dy)[0], str(jax.make_jaxpr(f)(x))

  y_ref, dx_ref, jaxpr_ref = run("xla")
  y, dx, jaxpr = run("rewrite")
  np.testing.assert_array_equal(y, y_ref)
  np.testing.assert_allclose(dx, dx_ref, rtol=0, atol=1e-6)
  assert "reduce_window" in jaxpr_ref and "reduce_window" not in jaxpr


@pytest.mark.parametrize("window,padding", [(3, 1), (2, 0)])
def test_max_pool_gradient_goes_to_the_first_of_tied_maxima_as_select_and_scatter(window,
                                                                                   padding):
  # ReLU outputs: many windows of zeros (ties), where a split gradient would differ.
  x = jnp.round(jax.nn.relu(normal(4, (2, 12, 12, 3))))
  dy = normal(5, (2, 6, 6, 3))
  grads = {}
  for impl in ("xla", "rewrite"):
    def f(x):
      with layers.conv_impl(impl):
        return layers.max_pool(x, window, 2, padding)
    grads[impl] = jax.vjp(f, x)[1](dy)[0]
  assert float(jnp.mean(x == 0)) > 0.3
  # Same routing (which inputs get gradient); sums of several windows may round differently.
  np.testing.assert_array_equal(grads["rewrite"] != 0, grads["xla"] != 0)
  np.testing.assert_allclose(grads["rewrite"], grads["xla"], rtol=0, atol=1e-6)


def test_config_conv_impl_chooses_the_conv_path_of_a_training_run(tmp_path, monkeypatch):
  from cnn_jax import train
  from helpers import load_config

  # LeNet-5 on one channel: its convs go to conv_by_taps under "rewrite", at a fraction of a
  # ResNet's compile and step time.
  real = cpu_ops.conv_by_taps
  rewritten = []
  monkeypatch.setattr(cpu_ops, "conv_by_taps",
                      lambda *args, **kwargs: rewritten.append(1) or real(*args, **kwargs))
  finals = {}
  for impl in ("xla", "rewrite"):
    rewritten.clear()
    config = load_config("lenet5_digits", total_steps=2, num_epochs=0, conv_impl=impl,
                         **{"data.batch_size": 16, "data.eval_batch_size": 150,
                            "schedule.name": "constant", "optimizer.learning_rate": 1e-3,
                            "checkpoint.best_metric": "", "mesh.num_devices": 1})
    finals[impl] = train.train_and_evaluate(config, str(tmp_path / impl))
    assert bool(rewritten) == (impl == "rewrite")
  np.testing.assert_allclose(finals["rewrite"]["loss"], finals["xla"]["loss"], rtol=1e-4)
  np.testing.assert_allclose(finals["rewrite"]["accuracy"], finals["xla"]["accuracy"])


def test_an_unknown_conv_impl_is_refused_before_the_run(tmp_path):
  from cnn_jax import train
  from cnn_jax.errors import UserError
  from helpers import load_config

  with pytest.raises(UserError, match="conv_impl must be one of auto, xla, rewrite"):
    train.train_and_evaluate(load_config("lenet5_digits", conv_impl="XLA"), str(tmp_path))
  assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("activation", [jax.nn.relu, jax.nn.gelu])
@pytest.mark.parametrize("rows", [4, 5])
def test_computed_once_equals_the_plain_function_in_values_and_gradients(activation, rows):
  a, b, dy = (normal(seed, (3, rows, 4, 3)) for seed in (6, 7, 8))
  fn = lambda a, b: activation(a + b)  # noqa: E731

  def run(impl):
    def f(a, b):
      with layers.conv_impl(impl):
        return layers.computed_once(fn, a, b)
    y, vjp = jax.vjp(f, a, b)
    forward_program = jax.jit(f).lower(a, b)  # Traced once: its text and its values.
    return (y, forward_program.compile()(a, b), vjp(dy),
            str(jax.make_jaxpr(lambda a, b: jax.vjp(f, a, b)[0])(a, b)),
            forward_program.as_text())

  y_ref, forward_ref, grads_ref, differentiated_ref, _ = run("xla")
  y, forward_only, grads, differentiated, forward_program = run("rewrite")
  # ReLU's add and max round the same anywhere; GELU's polynomial may be compiled (and so
  # rounded) differently in the conditional's branch.
  tolerance = 0 if activation is jax.nn.relu else 1e-6
  for got, want in zip((y, forward_only, *grads), (y_ref, forward_ref, *grads_ref)):
    np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)
  assert "cond[" not in differentiated_ref
  # Apart where the function is differentiated, and not in a forward-only program, where it
  # only cost time and memory.
  assert "cond[" in differentiated
  assert "stablehlo.case" not in forward_program  # How JAX lowers a conditional.


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's passes")
def test_computed_apart_is_a_conditional_that_xla_cannot_decide_or_remove():
  # The predicate stays hidden behind the barrier: a conditional XLA knew to take one branch
  # would be inlined, and the branch fused into the consumers again.
  a, b = (normal(seed, (2, 6, 6, 3)) for seed in (10, 11))
  fn = lambda a, b: (jnp.sin(a) * b, a + b)  # noqa: E731
  apart = jax.jit(lambda a, b: cpu_ops.computed_apart(fn, a, b))
  for got, want in zip(apart(a, b), fn(a, b)):
    np.testing.assert_array_equal(got, want)
  compiled = apart.lower(a, b).compile().as_text()
  assert " conditional(" in compiled
  assert " while(" not in compiled  # A loop's state buffer cost full-size copies.


def _fusions_reading_several_convs(model, x) -> int:
  """The most forward convolutions' outputs any one fusion of the compiled gradient reads."""
  import re

  graphdef, state = nnx.split(model)

  def loss(state):
    return jnp.sum(nnx.merge(graphdef, state)(x))

  with layers.conv_impl("rewrite"):
    hlo = jax.jit(jax.grad(loss)).lower(state).compile().as_text()
  entry = hlo[hlo.index("ENTRY"):]
  operand_lists = re.findall(r"fusion\((.*?)\), kind=", entry)
  assert operand_lists and "%conv_general_dilated" in entry
  return max(len(re.findall(r"%conv_general_dilated", operands)) for operands in operand_lists)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's fusion decisions")
def test_a_deep_residual_stage_is_not_recomputed_block_by_block():
  # Six identity blocks in one stage: without computed_once, XLA:CPU fused each block's
  # output chain into the next blocks' fusions (here up to 6 blocks' conv outputs read by one
  # fusion; 10 in ResNet-56's train step).
  from cnn_jax.models.resnet import BasicBlock

  class Stage(nnx.Module):
    def __init__(self):
      self.blocks = nnx.List([BasicBlock(4, 4, shortcut="A", rngs=nnx.Rngs(i)) for i in range(6)])

    def __call__(self, x):
      for block in self.blocks:
        x = block(x)
      return x

  x = normal(7, (4, 6, 6, 4))
  # A block's own fusions read its two convs' outputs at most.
  assert _fusions_reading_several_convs(Stage(), x) <= 2


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's fusion decisions")
def test_depthwise_taps_are_compiled_once_per_direction():
  # Most of a ConvNeXt step's XLA:CPU compile time was the 7x7 taps: over the whole batch the
  # forward's tap chain was fused into each consumer of the output (here the LayerNorm's
  # statistics and normalisation: 7 chains in all), and the kernel gradient's 49 sums were 49
  # kernels (54 reduce fusions). Now: forward, input gradient, kernel gradient.
  import re

  x = normal(8, (2, 9, 9, 8))
  w = normal(9, (7, 7, 1, 8))

  def loss(x, w):
    with layers.conv_impl("rewrite"):
      y = layers.conv_general_dilated(x, w, (1, 1), ((3, 3), (3, 3)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      feature_group_count=8)
    mean = y.mean(-1, keepdims=True)
    var = ((y - mean) ** 2).mean(-1, keepdims=True)
    return jnp.sum(jnp.sin((y - mean) / jnp.sqrt(var + 1e-6)))

  hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w).compile().as_text()
  computations = re.split(r"\n(?=\S)", hlo)
  tap_chains = [c for c in computations if len(re.findall(r" slice\(", c)) >= 49]
  reduce_fusions = [c for c in computations
                    if c.startswith("%fused") and re.search(r" reduce\(", c)]
  assert len(tap_chains) <= 3
  assert len(reduce_fusions) < 49

"""cnn_jax.summary: exact params / MACs against published figures, stage breakdown, CLI.

Every model here is only traced abstractly (nnx.eval_shape + jax.make_jaxpr), so ViT-L and
ResNet-50 cost no memory and little time.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from cnn_jax import summary
from cnn_jax.errors import UserError
from cnn_jax.models import list_models
from helpers import run_cli

# Published MACs for one 224x224 image (REFERENCE.md; torchvision / timm / the papers' "FLOPs")
# and exact parameter counts where the reference gives them.
REFERENCE = {
    "vit_tiny_patch16_224": (1.26e9, 5_717_416),
    "vit_small_patch16_224": (4.61e9, 22_050_664),
    "vit_base_patch16_224": (17.56e9, 86_567_656),
    "vit_large_patch16_224": (61.56e9, 304_326_632),
    "resnet18": (1.814e9, 11_689_512),
    "resnet50": (4.089e9, 25_557_032),
    "alexnet": (0.714e9, 61_100_840),
    "convnext_tiny": (4.47e9, 28_589_128),
    "convnextv2_atto": (0.55e9, None),
}


def _require(name: str) -> None:
  # Families written in parallel: skip until the variant is registered.
  if name not in list_models():
    pytest.skip(f"{name} not registered yet")


def vit_macs(dim: int, depth: int, patch: int, image: int, classes: int, in_ch: int = 3) -> int:
  """Closed form: patch conv + per block (qkv, q k^T, attn v, proj, fc1, fc2) + head."""
  patches = (image // patch) ** 2
  tokens = patches + 1
  block = tokens * dim * 3 * dim + 2 * tokens * tokens * dim + tokens * dim * dim \
      + 2 * tokens * dim * 4 * dim
  return patches * dim * patch * patch * in_ch + depth * block + dim * classes


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_reference_macs_and_params(name):
  _require(name)
  ref_macs, ref_params = REFERENCE[name]
  r = summary.summarize(name)
  assert r["image_size"] == 224 and r["in_channels"] == 3
  assert abs(r["macs"] - ref_macs) / ref_macs < 0.01, (name, r["macs"])
  assert r["flops"] == 2 * r["macs"]
  if ref_params is not None:
    assert r["params"] == ref_params


@pytest.mark.parametrize("name,dim,depth", [
    ("vit_tiny_patch16_224", 192, 12), ("vit_base_patch16_224", 768, 12),
    ("vit_large_patch16_224", 1024, 24)])
def test_vit_macs_exact(name, dim, depth):
  r = summary.summarize(name)
  assert r["macs"] == vit_macs(dim, depth, 16, 224, 1000)
  stages = {s["name"]: s for s in r["stages"]}
  assert list(stages) == ["patch_embed", "blocks", "norm", "head", summary.TOP]
  assert stages["patch_embed"]["macs"] == 196 * dim * 16 * 16 * 3
  assert stages["head"]["macs"] == dim * 1000
  assert stages["(top)"]["params"] == dim + 197 * dim  # cls_token + pos_embed
  assert len(stages["blocks"]["items"]) == depth


def test_lenet5_exact():
  r = summary.summarize("lenet5")
  assert (r["image_size"], r["in_channels"], r["num_classes"]) == (32, 1, 10)
  assert r["params"] == 61_706
  # c1 28*28*6*25, c3 10*10*16*150, c5 400*120, f6 120*84, head 84*10
  assert r["macs"] == 117_600 + 240_000 + 48_000 + 10_080 + 840
  # float32 outputs of those five layers
  assert r["activation_bytes"] == 4 * (28 * 28 * 6 + 10 * 10 * 16 + 120 + 84 + 10)
  assert r["activation_bytes_all"] > r["activation_bytes"]
  assert [s["name"] for s in r["stages"]] == ["c1", "c3", "c5", "f6", "head", summary.TOP]
  stage_macs = {s["name"]: s["macs"] for s in r["stages"]}
  assert stage_macs["c3"] == 240_000 and stage_macs[summary.TOP] == 0


@pytest.mark.parametrize("name", ["lenet5", "vit_tiny_patch4_32", "resnet50", "convnext_tiny",
                                  "alexnet"])
def test_stages_add_up(name):
  _require(name)
  r = summary.summarize(name)
  for key in ("params", "macs", "flops", "activation_bytes", "activation_bytes_all"):
    assert sum(s[key] for s in r["stages"]) == r[key], key
    for s in r["stages"]:
      if "items" in s:
        assert sum(i[key] for i in s["items"]) == s[key], (s["name"], key)
  # Nearly all compute belongs to a named child; the (top) row only holds glue.
  top = next(s for s in r["stages"] if s["name"] == summary.TOP)
  assert top["macs"] == 0


def test_resnet_stage_names():
  _require("resnet50")
  names = [s["name"] for s in summary.summarize("resnet50")["stages"]]
  assert names[:5] == ["stem", "layer1", "layer2", "layer3", "layer4"]


def test_remat_does_not_change_counts():
  plain = summary.summarize("vit_tiny_patch4_32")
  remat = summary.summarize("vit_tiny_patch4_32", remat=True)
  assert remat["macs"] == plain["macs"] and remat["params"] == plain["params"]
  assert [s["macs"] for s in remat["stages"]] == [s["macs"] for s in plain["stages"]]


@pytest.mark.parametrize("impl", ["xla", "cudnn"])
def test_attention_impl_does_not_change_counts(impl):
  """jax.nn's attention (and cuDNN's, counted through the same ops on this CPU) has the
  model's own attention's MACs, to the unit."""
  plain = summary.summarize("vit_small_patch16_224")
  other = summary.summarize("vit_small_patch16_224", attention_impl=impl)
  assert plain["macs"] == vit_macs(384, 12, 16, 224, 1000) == other["macs"]
  assert other["params"] == plain["params"] == 22_050_664


def test_batch_totals_and_options():
  r = summary.summarize("vit_tiny_patch4_32", batch_size=4, num_classes=10)
  assert r["num_classes"] == 10 and r["output_shape"] == [1, 10]
  assert r["batch"]["macs"] == 4 * r["macs"]
  assert r["batch"]["flops"] == 2 * r["batch"]["macs"]
  assert r["batch"]["activation_bytes"] == 4 * r["activation_bytes"]
  bf16 = summary.summarize("vit_tiny_patch4_32", num_classes=10, dtype=jnp.bfloat16)
  assert bf16["macs"] == r["macs"]
  assert 2 * bf16["activation_bytes"] == r["activation_bytes"]


def test_image_size_is_passed_to_the_model():
  r = summary.summarize("vit_tiny_patch16_224", image_size=64)
  assert r["image_size"] == 64
  assert r["macs"] == vit_macs(192, 12, 16, 64, 1000)


def test_image_size_for_a_model_without_that_argument():
  _require("resnet20")
  r = summary.summarize("resnet20", image_size=32, num_classes=10)
  assert r["params"] == 269_722 and r["image_size"] == 32
  assert 40e6 < r["macs"] < 42e6  # ~41M MACs, He et al. 2016 CIFAR ResNet-20


def test_user_errors():
  with pytest.raises(UserError, match="vit_small_patch16_224"):
    summary.summarize("vit_smal_patch16_224")
  with pytest.raises(UserError, match="divisible"):
    summary.summarize("vit_base_patch16_224", image_size=200)
  with pytest.raises(UserError, match="batch_size"):
    summary.summarize("lenet5", batch_size=0)


def test_tracing_leaves_classes_unpatched():
  before = (nnx.Linear.__call__, nnx.Conv.__call__, nnx.LayerNorm.__call__)
  summary.summarize("vit_tiny_patch4_32")
  assert (nnx.Linear.__call__, nnx.Conv.__call__, nnx.LayerNorm.__call__) == before
  assert not any(hasattr(c, "_summary_stage") for c in (nnx.Linear, nnx.Conv))


def _count(fn, *shapes):
  closed = jax.make_jaxpr(fn)(*[jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes])
  stats: dict = {}
  notes: set = set()
  summary.walk_jaxpr(closed.jaxpr, stats, notes)
  return sum(s.macs for s in stats.values()), notes


def test_mac_counting_rules_and_sub_jaxprs():
  # Grouped (depthwise) conv: out elements x kernel area x in-channels per group.
  def depthwise(x, k):
    return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", feature_group_count=8,
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
  macs, _ = _count(depthwise, (2, 10, 10, 8), (7, 7, 1, 8))
  assert macs == 2 * 10 * 10 * 8 * 49

  # Strided conv, 2 groups: out 5x5x6, kernel 3x3, 4/2 in-channels per group.
  def strided(x, k):
    return jax.lax.conv_general_dilated(x, k, (2, 2), "SAME", feature_group_count=2,
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
  macs, _ = _count(strided, (1, 10, 10, 4), (3, 3, 2, 6))
  assert macs == 5 * 5 * 6 * 9 * 2

  # Batched matmul: (b, m, k) x (b, k, n) -> b*m*n*k.
  macs, _ = _count(lambda a, b: jnp.einsum("bmk,bkn->bmn", a, b), (3, 4, 5), (3, 5, 6))
  assert macs == 3 * 4 * 6 * 5

  @jax.custom_jvp
  def custom(a):
    return a @ a

  custom.defjvp(lambda primals, tangents: (custom(primals[0]), tangents[0]))

  def nested(a):
    y = jax.jit(lambda t: t @ t)(a)                       # 64 MACs (4x4x4)
    y = jax.checkpoint(lambda t: t @ t)(y)                # 64
    y = custom(y)                                         # 64
    y, _ = jax.lax.scan(lambda c, _: (c @ c, None), y, length=3)  # 3 x 64
    y = jax.lax.cond(y[0, 0] > 0, lambda t: t @ t @ t, lambda t: t, y)  # costliest: 128
    return y
  macs, notes = _count(nested, (4, 4))
  assert macs == 64 * 3 + 3 * 64 + 128
  assert not notes

  # Elementwise work is not counted.
  macs, _ = _count(lambda a: jnp.tanh(a) * a + 1.0, (100, 100))
  assert macs == 0


def test_cli_json_has_every_field():
  proc = run_cli("cnn_jax.summary", "--model", "vit_tiny_patch4_32", "--num_classes", "10",
                 "--batch_size", "2", "--json")
  assert proc.returncode == 0, proc.stderr
  r = json.loads(proc.stdout)
  for key in ("model", "input_shape", "image_size", "in_channels", "num_classes",
              "output_shape", "batch_size", "params", "macs", "flops", "activation_bytes",
              "activation_bytes_all", "stages", "conventions", "notes", "batch"):
    assert key in r, key
  assert r["model"] == "vit_tiny_patch4_32" and r["num_classes"] == 10 and r["batch_size"] == 2
  assert r["params"] == 5_362_762 and r["flops"] == 2 * r["macs"]
  assert r["batch"]["macs"] == 2 * r["macs"]
  for stage in r["stages"]:
    assert {"name", "params", "macs", "flops", "activation_bytes",
            "activation_bytes_all"} <= set(stage)
  assert r == summary.summarize("vit_tiny_patch4_32", num_classes=10, batch_size=2)


def test_cli_table():
  proc = run_cli("cnn_jax.summary", "--model", "lenet5")
  assert proc.returncode == 0, proc.stderr
  out = proc.stdout
  assert "MACs = multiply-accumulates" in out and "FLOPs = 2 x MACs" in out
  assert "61,706" in out and "MACs 416,520" in out and "FLOPs 833,040" in out


def test_cli_unknown_model():
  proc = run_cli("cnn_jax.summary", "--model", "vit_smal_patch16_224")
  assert proc.returncode == 2
  assert proc.stdout == ""
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith("error: unknown model 'vit_smal_patch16_224'")
  assert "vit_small_patch16_224" in lines[0]
  assert "Traceback" not in proc.stderr

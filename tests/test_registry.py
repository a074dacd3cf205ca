"""Every registered model builds (abstractly: nnx.eval_shape, no parameter memory) and has the
parameter count the documentation's model table gives, with its default options.

The table is read from README.md's Models section or docs/models.md, whichever holds it (both
are read; where both do, they must agree). A model the table gives no count for is listed in
NO_COUNT_IN_TABLE with the reason, and checked against the model its count follows from.
"""

from __future__ import annotations

import functools
import os
import re

import pytest

from cnn_jax.models import list_models
from cnn_jax.models.layers import count_params
from helpers import REPO_ROOT, abstract_model

TABLE_FILES = ("README.md", os.path.join("docs", "models.md"))

# name -> (the model whose count it has, why the table gives none)
NO_COUNT_IN_TABLE: dict[str, tuple[str, str]] = {
    **{f"plain{d}": (f"resnet{d}", "CIFAR plain twins are listed without counts: option-A "
                     "shortcuts have no parameters, so each is as large as its ResNet")
       for d in (20, 32, 44, 56, 110)},
    "convnext_roadmap": ("convnext_tiny", "one name for twelve steps (option `step`); the default, "
                         "the last step, is ConvNeXt-T"),
    "vit_tiny_patch4_32": ("", "32 px variant listed without a count"),
    "vit_small_patch4_32": ("", "32 px variant listed without a count"),
    "hybrid_micro": ("", "CPU-scale hybrid listed without a count (hybrid.py's docstring has it)"),
    "vit_micro_patch8_64": ("", "CPU-scale ViT of the long-range task, not in the table (only "
                            "named in the README's long-range section)"),
}

_TABLE_ENTRY = re.compile(r"`(_?[a-z][a-z0-9_]*)` \(([\d,]+)\)")


def _parameter_tables(text: str) -> list[list[str]]:
  """The Markdown tables (lists of row lines) whose header mentions parameters."""
  tables, block = [], []
  for line in text.splitlines() + [""]:
    if line.lstrip().startswith("|"):
      block.append(line)
      continue
    if block and "parameters" in block[0].lower():
      tables.append(block)
    block = []
  return tables


def parse_counts(text: str) -> dict[str, int]:
  """{name: count} from entries "`name` (12,345)" of the parameter tables; "`_femto`" after
  "`convnextv2_atto`" in the same row stands for convnextv2_femto."""
  counts: dict[str, int] = {}
  for table in _parameter_tables(text):
    for row in table:
      prefix = ""
      for name, count in _TABLE_ENTRY.findall(row):
        if name.startswith("_"):
          name = prefix + name
        else:
          prefix = name.rsplit("_", 1)[0] if "_" in name else ""
        counts[name] = int(count.replace(",", ""))
  return counts


@functools.lru_cache(maxsize=None)
def documented_counts() -> dict[str, int]:
  found = {}
  for path in TABLE_FILES:
    full = os.path.join(REPO_ROOT, path)
    if os.path.exists(full):
      with open(full, encoding="utf-8") as f:
        counts = parse_counts(f.read())
      if counts:
        found[path] = counts
  assert found, f"no model parameter table in any of {TABLE_FILES}"
  merged: dict[str, int] = {}
  for path, counts in found.items():
    for name, count in counts.items():
      assert merged.setdefault(name, count) == count, (
          f"{path} gives {name} {count:,} parameters, another file {merged[name]:,}")
  return merged


def test_parse_counts_reads_rows_and_expands_abbreviated_names():
  text = ("| family | names (parameters) | file |\n|---|---|---|\n"
          "| V2 | `convnextv2_atto` (3,708,400), `_femto` (5,233,240); `hybrid_micro` | f |\n"
          "\n| step | time |\n|---|---|\n| `resnet50` (32) | 3 s |\n")
  assert parse_counts(text) == {"convnextv2_atto": 3_708_400, "convnextv2_femto": 5_233_240}


def test_the_table_and_the_exception_list_name_registered_models_only():
  registered = set(list_models())
  table = documented_counts()
  assert set(table) <= registered, f"not registered: {sorted(set(table) - registered)}"
  assert set(NO_COUNT_IN_TABLE) <= registered
  # A model with a count in the table must not also be excused from having one.
  assert not set(NO_COUNT_IN_TABLE) & set(table)
  assert all(same in table for same, _ in NO_COUNT_IN_TABLE.values() if same)


@pytest.mark.parametrize("name", list_models())
def test_builds_and_has_the_documented_parameter_count(name):
  model = abstract_model(name)
  params = count_params(model)
  assert params > 0
  table = documented_counts()
  if name in table:
    assert params == table[name], f"{name}: {params:,} parameters, the table says {table[name]:,}"
  else:
    assert name in NO_COUNT_IN_TABLE, (
        f"{name} has no count in the model table of {TABLE_FILES}: add one, or list it in "
        "NO_COUNT_IN_TABLE with the reason")
    same_as, _ = NO_COUNT_IN_TABLE[name]
    if same_as:
      assert params == table[same_as]


def _weights(model):
  import jax
  from flax import nnx
  return jax.tree.leaves(nnx.state(model, nnx.Param))


def test_initialize_compiles_the_same_draw_as_the_eager_initialisers(monkeypatch):
  import numpy as np
  from flax import nnx

  from cnn_jax.models import registry
  constructor = registry.get_constructor("resnet20")
  monkeypatch.setattr(registry, "_compiled_inits", {})
  build = lambda: registry.initialize(lambda rngs: constructor(rngs=rngs), nnx.Rngs(3),
                                      cache_key=("resnet20 test",))
  compiled = build()
  assert len(registry._compiled_inits) == 1
  again = build()  # From the compiled program kept for this key.
  eager = constructor(rngs=nnx.Rngs(3))
  monkeypatch.setattr(registry, "_MAX_COMPILED_INIT_SIZE", 0)
  monkeypatch.setattr(registry, "_compiled_inits", {})
  too_big_to_compile = build()
  assert list(registry._compiled_inits.values()) == [registry._EAGER]
  for c, a, e, b in zip(*map(_weights, (compiled, again, eager, too_big_to_compile)),
                        strict=True):
    np.testing.assert_array_equal(c, a)
    np.testing.assert_array_equal(e, b)
    # The same random bits; the transforms of them may round differently once compiled.
    np.testing.assert_allclose(c, e, rtol=1e-5, atol=1e-6)
  assert max(float(np.std(w)) for w in _weights(compiled)) > 0.01


def test_a_build_for_loaded_weights_draws_only_the_rest_as_a_full_build_does():
  """registry.build(weights_to_load=True), what loading a checkpoint builds: every Param and
  BatchStat a placeholder of its shape and dtype, and the rest of the state (the drop path and
  dropout streams) and the caller's Rngs afterwards bit-equal to a full build's; with `fresh`
  (a new classifier), its weights drawn too, bit-equal to the full build's."""
  import jax
  import numpy as np
  from flax import nnx

  from cnn_jax.models import registry

  def as_arrays(tree):
    return [np.asarray(jax.random.key_data(leaf) if jax.dtypes.issubdtype(
        leaf.dtype, jax.dtypes.prng_key) else leaf) for leaf in jax.tree.leaves(tree)]

  # BatchNorm statistics and a drop-path stream in each block (resnet20), LayerScale and GRN
  # weights with the streams (convnextv2_atto, narrowed).
  for name, head, options in [
      ("resnet20", "fc", {"drop_path_rate": 0.1}),
      ("convnextv2_atto", "head.fc", {"drop_path_rate": 0.1, "depths": (1, 1, 1, 1),
                                      "dims": (8, 8, 16, 16)})]:
    full_rngs, rngs = nnx.Rngs(3, params=3, dropout=4), nnx.Rngs(3, params=3, dropout=4)
    full = registry.build(name, registry.get_constructor(name), full_rngs, options)
    built = registry.build(name, registry.get_constructor(name), rngs, options,
                           weights_to_load=True)
    assert nnx.graphdef(built) == nnx.graphdef(full)
    placeholders = nnx.state(built, registry.WEIGHTS)
    expected = nnx.state(full, registry.WEIGHTS)
    assert jax.tree.structure(placeholders) == jax.tree.structure(expected)
    for placeholder, weight in zip(jax.tree.leaves(placeholders), jax.tree.leaves(expected),
                                   strict=True):
      assert isinstance(placeholder, jax.ShapeDtypeStruct)
      assert (placeholder.shape, placeholder.dtype) == (weight.shape, weight.dtype)
    kinds = {type(v) for _, v in placeholders.flat_state()}
    assert kinds == ({nnx.Param, nnx.BatchStat} if name == "resnet20" else {nnx.Param})
    rest, full_rest = (as_arrays(nnx.state(m, nnx.Not(registry.WEIGHTS))) for m in (built, full))
    assert len(rest) == len(full_rest) > 0
    for a, b in zip(rest, full_rest, strict=True):
      np.testing.assert_array_equal(a, b)
    for a, b in zip(as_arrays(nnx.state(rngs)), as_arrays(nnx.state(full_rngs)), strict=True):
      np.testing.assert_array_equal(a, b)

    with_head = registry.build(name, registry.get_constructor(name),
                               nnx.Rngs(3, params=3, dropout=4), options, weights_to_load=True,
                               fresh=(head,))
    drawn = {".".join(map(str, p)): v.get_value()
             for p, v in nnx.state(with_head, registry.WEIGHTS).flat_state()
             if not isinstance(v.get_value(), jax.ShapeDtypeStruct)}
    assert sorted(drawn) == [f"{head}.bias", f"{head}.kernel"]
    full_weights = {".".join(map(str, p)): v[...] for p, v in expected.flat_state()}
    for path, value in drawn.items():
      np.testing.assert_array_equal(value, full_weights[path])

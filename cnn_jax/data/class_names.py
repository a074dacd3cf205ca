"""Class ids and readable names: ImageNet-1k from files the tensorflow-datasets package ships,
or those of a training run's data.

ImageNet: `tensorflow_datasets/datasets/imagenet2012/labels.txt` lists the 1000 WordNet ids in
the standard class order (sorted ids, as an ImageFolder of ILSVRC2012 sorts its directories);
`tensorflow_datasets/datasets/siscore/labels.py` holds IMAGENET_LABELS_LIST, the readable
names in the same order (from https://gist.github.com/yrevar/942d3a0ac09ec9e5eb3a, the list
timm and torchvision users know: "tench, Tinca tinca", ...). Both are read as files, without
importing tensorflow_datasets (which would start TensorFlow's import machinery).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.util
import os

import ml_collections

from cnn_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class ClassNames:
  """ids[i]: a stable identifier of class i (WordNet id, folder name, index); labels[i]: what
  a person reads."""
  ids: tuple[str, ...]
  labels: tuple[str, ...]

  def __len__(self) -> int:
    return len(self.ids)


def indices(num_classes: int) -> ClassNames:
  names = tuple(str(i) for i in range(num_classes))
  return ClassNames(names, names)


def _tfds_root() -> str:
  spec = importlib.util.find_spec("tensorflow_datasets")
  if spec is None or not spec.submodule_search_locations:
    raise UserError("ImageNet class names come from the tensorflow-datasets package, which is "
                    "not installed (pip install -r requirements.txt), or pass --class_names")
  return list(spec.submodule_search_locations)[0]


@functools.cache
def imagenet() -> ClassNames:
  """The 1000 ImageNet-1k classes: WordNet ids and the first name of each synset."""
  root = _tfds_root()
  with open(os.path.join(root, "datasets", "imagenet2012", "labels.txt")) as f:
    wnids = tuple(line.strip() for line in f if line.strip())
  with open(os.path.join(root, "datasets", "siscore", "labels.py")) as f:
    module = ast.parse(f.read())
  names = None
  for node in module.body:
    if isinstance(node, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id == "IMAGENET_LABELS_LIST" for t in node.targets):
      names = ast.literal_eval(node.value)
  if len(wnids) != 1000 or names is None or len(names) != 1000:
    raise UserError(f"the ImageNet class files in {root} are not the expected 1000 entries; "
                    "pass --class_names FILE")
  return ClassNames(wnids, tuple(name.split(",")[0].strip() for name in names))


def from_file(path: str) -> ClassNames:
  """One class name per line (blank lines ignored)."""
  try:
    with open(path) as f:
      names = tuple(line.strip() for line in f if line.strip())
  except OSError as e:
    raise UserError(f"cannot read class names {path}: {e.strerror or e}") from None
  if not names:
    raise UserError(f"class names file {path} is empty")
  return ClassNames(names, names)


def for_classes(num_classes: int) -> ClassNames:
  """ImageNet's names for a 1000-class model, indices otherwise."""
  return imagenet() if num_classes == 1000 else indices(num_classes)


def of_run(config: ml_collections.ConfigDict, num_classes: int) -> ClassNames:
  """The class names of a training run's data, as far as its config tells them."""
  data = config.data
  if data.source == "imagefolder":
    root = os.path.join(data.data_dir, data.train_split)
    if os.path.isdir(root):
      found = sorted(d.name for d in os.scandir(root)
                     if d.is_dir() and not d.name.startswith("."))
      if len(found) == num_classes:
        if num_classes == 1000 and tuple(found) == imagenet().ids:
          return imagenet()
        return ClassNames(tuple(found), tuple(found))
  if data.source == "tfds" and data.name.startswith("imagenet2012") and num_classes == 1000:
    return imagenet()
  if data.source == "tfds":
    try:
      from cnn_jax.data.sources import tfds  # pylint: disable=import-outside-toplevel
      info = tfds.builder(data.name, data.data_dir or None).info
      label = info.features[info.supervised_keys[1]]
      if len(label.names) == num_classes:
        return ClassNames(tuple(label.names), tuple(label.names))
    except Exception:  # pylint: disable=broad-except  # Names are a nicety; indices still work.
      pass
  return indices(num_classes)

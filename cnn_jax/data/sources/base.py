"""What every source gives the pipeline: train and eval records, read at random."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol


class Records(Protocol):
  """A random-access, picklable sequence of `(image, label)` records."""

  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> tuple[Any, int]: ...


@dataclasses.dataclass(frozen=True)
class Splits:
  """One source's train and eval records and its number of classes.

  `statistics` says what the images are: None for encoded images (bytes, a file path or a
  uint8 HWC array) that the pipeline decodes, augments and normalises per `data.*`; the
  (mean, std) per channel of the train split for the embedded sets, which hold decoded float32
  HWC images in [0, 1] and are normalised with their own statistics.
  """
  train: Records
  eval: Records
  num_classes: int
  statistics: tuple[tuple[float, ...], tuple[float, ...]] | None = None

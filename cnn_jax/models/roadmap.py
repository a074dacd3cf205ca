"""The "modernising a ResNet" roadmap between ResNet-50 and ConvNeXt-T, as options of
`convnext.ConvNeXt`.

Liu et al., "A ConvNet for the 2020s", CVPR 2022, arXiv:2201.03545, section 2 and Fig. 2.

`convnext_roadmap(step=...)`; steps are cumulative, each row lists only the options of
`convnext.ConvNeXt` it changes (paper ImageNet-1K top-1 in brackets):

  0  resnet50               stem='resnet', stem_dim=64, depths=(3,4,6,3),
                            dims=(256,512,1024,2048), block_type='bottleneck' (hidden = dim/4),
                            dw_position='middle', depthwise=False, kernel_size=3,
                            activation='relu', num_activations='all', num_norms='all', norm='bn',
                            downsample='in_block', head_norm=False, layer_scale_init=1e-6  [78.8]
  1  stage_ratio            depths=(3,3,9,3)                                               [79.4]
  2  patchify_stem          stem='patchify' (4x4 stride-4 conv + norm)                    [79.5]
  3  resnextify             depthwise=True, dims=(384,768,1536,3072) (hidden 96..768),
                            stem_dim=96                                                    [80.5]
  4  inverted_bottleneck    block_type='inverted' (hidden = 4 dim), dims=(96,192,384,768)  [80.6]
  5  move_dw_up             dw_position='top'                                              [79.9]
  6  kernel_7               kernel_size=7 (the paper also tries 5, 9, 11: pass kernel_size) [80.6]
  7  gelu                   activation='gelu'                                              [80.6]
  8  fewer_activations      num_activations='one' (only between fc1 and fc2)               [81.3]
  9  fewer_norms            num_norms='one' (only after conv_dw)                           [81.4]
  10 layer_norm             norm='ln'                                                      [81.5]
  11 separate_downsampling  downsample='separate' (LN + 2x2 stride-2 conv between stages),
                            head_norm=True; equals convnext_tiny (28,589,128 params)       [82.0]

Interpretation choices where the paper is silent: LayerScale (1e-6, part of the ConvNeXt
training recipe) is on at every step, so step 0 is torchvision's ResNet-50 plus one per-channel
scale per block (25,572,136 params; `layer_scale_init=None` gives torchvision's exact
25,557,032); the patchify stem always has a norm after its conv; the projection shortcut of an
in-block downsampling (1x1 strided conv + norm) keeps its norm when `num_norms='one'`; a conv or
linear layer has a bias unless a BatchNorm directly follows it (torchvision/timm convention).
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from cnn_jax.models.convnext import ConvNeXt
from cnn_jax.models.registry import register_model


# Cumulative changes, in the order of the paper's Fig. 2 (see the module docstring).
ROADMAP_STEPS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("resnet50", dict(stem="resnet", stem_dim=64, depths=(3, 4, 6, 3),
                      dims=(256, 512, 1024, 2048), block_type="bottleneck",
                      dw_position="middle", depthwise=False, kernel_size=3, activation="relu",
                      num_activations="all", num_norms="all", norm="bn",
                      downsample="in_block", head_norm=False, layer_scale_init=1e-6)),
    ("stage_ratio", dict(depths=(3, 3, 9, 3))),
    ("patchify_stem", dict(stem="patchify")),
    ("resnextify", dict(depthwise=True, dims=(384, 768, 1536, 3072), stem_dim=96)),
    ("inverted_bottleneck", dict(block_type="inverted", dims=(96, 192, 384, 768))),
    ("move_dw_up", dict(dw_position="top")),
    ("kernel_7", dict(kernel_size=7)),
    ("gelu", dict(activation="gelu")),
    ("fewer_activations", dict(num_activations="one")),
    ("fewer_norms", dict(num_norms="one")),
    ("layer_norm", dict(norm="ln")),
    ("separate_downsampling", dict(downsample="separate", head_norm=True)),
)
ROADMAP_STEP_NAMES: tuple[str, ...] = tuple(name for name, _ in ROADMAP_STEPS)


def roadmap_config(step: int | str, width: float = 1.0) -> dict[str, Any]:
  """ConvNeXt constructor options of a roadmap step, given by index or name.

  width multiplies the step's stage widths and stem width (hence every hidden width, which
  follows from them), so all steps narrow in the same proportion; each scaled width must be a
  whole number (width=1/4: step 0 has dims (64, 128, 256, 512), stem 16; step 11 dims
  (24, 48, 96, 192), stem 24)."""
  if isinstance(step, str):
    if step not in ROADMAP_STEP_NAMES:
      raise ValueError(f"unknown roadmap step {step!r}; choose from {list(ROADMAP_STEP_NAMES)}")
    step = ROADMAP_STEP_NAMES.index(step)
  if not 0 <= step < len(ROADMAP_STEPS):
    raise ValueError(f"roadmap step must be in 0..{len(ROADMAP_STEPS) - 1} (got {step})")
  config: dict[str, Any] = {}
  for _, changes in ROADMAP_STEPS[:step + 1]:
    config.update(changes)
  if width != 1.0:
    stem_dim = config.get("stem_dim") or config["dims"][0]
    scaled = [d * width for d in (*config["dims"], stem_dim)]
    if not all(s >= 1 and abs(s - round(s)) < 1e-6 for s in scaled):
      raise ValueError(f"roadmap width {width} must scale dims {config['dims']} and stem_dim "
                       f"{stem_dim} of step {step} to whole positive numbers")
    config["dims"] = tuple(int(round(s)) for s in scaled[:-1])
    config["stem_dim"] = int(round(scaled[-1]))
  return config


@register_model
def convnext_roadmap(*, rngs: nnx.Rngs, step: int | str = len(ROADMAP_STEPS) - 1,
                     width: float = 1.0, **kwargs: Any) -> ConvNeXt:
  """A model of the ResNet-50 -> ConvNeXt-T roadmap; kwargs override the step's options
  (e.g. kernel_size=5 for the kernel-size sweep). width < 1 narrows every step in the same
  proportion (see roadmap_config), for small-scale runs of the whole roadmap."""
  return ConvNeXt(rngs=rngs, **{**roadmap_config(step, width), **kwargs})

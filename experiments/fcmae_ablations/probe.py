"""Linear probe of the FCMAE encoders before fine-tuning: why do they fine-tune slowly here?

  python experiments/fcmae_ablations/probe.py [--pretrain_dir D]

For a randomly initialised encoder (the scratch run's start) and each pre-trained encoder of
configs/sweeps/fcmae_ablations_pretrain.py: the globally pooled final features (what the
classifier head sees) of the 149 labelled training digits and the 300 test digits, normalised as
the fine-tuning run normalises them. Reports the spread of those features across images
(std across images / RMS over all, per channel, averaged: near 0 = every image looks alike to
the head) and the test accuracy of a logistic-regression probe fitted on the 149 training
images (the features are frozen). Writes probe.json next to this file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, REPO_ROOT)

from cnn_jax import checkpoint, sweep, train  # noqa: E402
from cnn_jax.data.sources import embedded  # noqa: E402


def pooled_features(config, encoder_dir: str | None, images: np.ndarray) -> np.ndarray:
  from flax import nnx
  import jax.numpy as jnp

  model = train.build_model(config)
  if encoder_dir:
    _, _, params, model_state = train.split_model(model)
    params, model_state = checkpoint.load_pretrained(params, model_state, encoder_dir,
                                                     init_head="drop")
    nnx.update(model, params, model_state)
  model.eval()
  return np.asarray(jnp.mean(model.forward_features(jnp.asarray(images)), axis=(1, 2)))


def spread(features: np.ndarray) -> float:
  rms = np.sqrt((features ** 2).mean(axis=0)) + 1e-12
  return float((features.std(axis=0) / rms).mean())


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--pretrain_dir", default=None)
  args = parser.parse_args()
  from sklearn.linear_model import LogisticRegression
  from sklearn.preprocessing import StandardScaler

  pre_sweep = sweep.load_config_file(
      os.path.join(REPO_ROOT, "configs", "sweeps", "fcmae_ablations_pretrain.py"))
  root = args.pretrain_dir or os.path.join(REPO_ROOT, pre_sweep.workdir)
  ft_sweep = sweep.load_config_file(
      os.path.join(REPO_ROOT, "configs", "sweeps", "fcmae_ablations_finetune.py"))
  ft = {p.config.ablation: p.config for p in sweep.build_points(ft_sweep)}
  arrays = embedded.load_arrays(ft["scratch"].data)  # the 149 labelled digits, test split
  mean, std = np.asarray(arrays.mean), np.asarray(arrays.std)
  x_train = (arrays.train.images - mean) / std
  x_test = (arrays.test.images - mean) / std
  runs = [("random init", ft["scratch"], None)]
  for p in sweep.build_points(pre_sweep):
    runs.append((p.config.ablation, ft[p.config.ablation],
                 os.path.join(root, p.name, "encoder")))
  results = []
  for label, config, encoder_dir in runs:
    f_train = pooled_features(config, encoder_dir, x_train)
    f_test = pooled_features(config, encoder_dir, x_test)
    scaler = StandardScaler().fit(f_train)
    probe = LogisticRegression(max_iter=2000, C=1.0).fit(scaler.transform(f_train),
                                                         arrays.train.labels)
    acc = float((probe.predict(scaler.transform(f_test)) == arrays.test.labels).mean())
    results.append({"encoder": label, "feature_spread": spread(f_test),
                    "feature_rms": float(np.sqrt((f_test ** 2).mean())),
                    "linear_probe_test_accuracy": acc})
    print(f"{label:12s} spread {results[-1]['feature_spread']:.3f}  "
          f"rms {results[-1]['feature_rms']:.3g}  probe acc {100 * acc:.1f} %", flush=True)
  with open(os.path.join(HERE, "probe.json"), "w") as f:
    json.dump(results, f, indent=2)


if __name__ == "__main__":
  main()

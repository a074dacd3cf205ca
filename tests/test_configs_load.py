"""Every config file in configs/ loads with its default argument, and every training config's
values are in the ranges the loop accepts: a typo in a rarely run full-scale recipe shows up
here, not on the cluster."""

import glob
import os

import ml_collections
import pytest

from cnn_jax import cli, train
from cnn_jax.models import registry
from helpers import REPO_ROOT

CONFIG_FILES = sorted(
    os.path.relpath(p, REPO_ROOT)
    for p in glob.glob(os.path.join(REPO_ROOT, "configs", "**", "*.py"), recursive=True))


@pytest.mark.parametrize("path", CONFIG_FILES)
def test_config_file_loads(path):
  config = cli.load_module(os.path.join(REPO_ROOT, path)).get_config()
  assert isinstance(config, ml_collections.ConfigDict)
  assert len(config) > 0
  if "optimizer" in config:  # a training config (a sweep's names its runs' instead)
    registry.get_constructor(config.model.name)
    train.check_ranges(config)  # check_config but init_from, which fine-tuning configs leave out


def test_there_are_configs():
  assert len(CONFIG_FILES) >= 15

"""Test set-up, before JAX starts a backend anywhere: 8 fake CPU devices, so 1-vs-8-device
equivalence runs in one process, and the XLA:CPU flags the command-line tools apply for
themselves (cnn_jax/hostenv.py), so the tests run the convolutions the tools run, as fast.

The repository root is on sys.path through pytest's `pythonpath` option (pyproject.toml).
"""

import os

from cnn_jax import hostenv

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
hostenv.set_xla_flags()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

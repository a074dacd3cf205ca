"""cnn_jax: the convolutional networks that shaped vision, in JAX/Flax NNX."""

from cnn_jax import hostenv as _hostenv

__version__ = "0.1.0"

# Before JAX starts its backend: the XLA:CPU flags, then `python -m cnn_jax.main` etc. re-run
# with huge pages (see hostenv).
_hostenv.set_xla_flags()
_hostenv.reexec_with_hugepages()

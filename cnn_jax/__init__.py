"""cnn_jax: the convolutional networks that shaped vision, in JAX/Flax NNX."""

from cnn_jax import hostenv as _hostenv

__version__ = "0.1.0"

# Before anything imports jax: `python -m cnn_jax.main` etc. run with huge pages (see hostenv).
_hostenv.reexec_with_hugepages()

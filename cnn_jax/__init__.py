"""cnn_jax: the convolutional networks that shaped vision, in JAX/Flax NNX."""

__version__ = "0.1.0"

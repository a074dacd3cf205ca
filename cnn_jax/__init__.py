"""cnn_jax: the convolutional networks that shaped vision, in JAX/Flax NNX.

Importing it sets nothing in the process: the command-line tools apply their process settings
(XLA:CPU flags, glibc's malloc settings) when they start, see cnn_jax/cli.py and cnn_jax/hostenv.py.
"""

__version__ = "0.1.0"

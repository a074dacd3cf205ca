"""The one exception type that means "the user asked for something we cannot do".

Entry points catch it and print a single line on stderr with a non-zero exit;
anything else is a programming error and keeps its traceback. Standard library only:
bench_torch.py imports this file as its sibling in a Python that may lack jax and cnn_jax.
"""


class UserError(Exception):
  """Bad input from the user: a config, a flag, a file, a model name."""

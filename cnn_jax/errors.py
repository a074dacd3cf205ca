"""The one exception type that means "the user asked for something we cannot do".

Entry points catch it and print a single line on stderr with a non-zero exit;
anything else is a programming error and keeps its traceback.
"""


class UserError(Exception):
  """Bad input from the user: a config, a flag, a file, a model name."""

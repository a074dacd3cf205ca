"""Every script under experiments/ starts as its README says, `python experiments/NAME/X.py`,
from any directory: it finds cnn_jax (which `make venv` does not install into the
environment) and everything it imports at the top still exists."""

import os
import subprocess
import sys
import textwrap

from helpers import HANG_TIMEOUT, REPO_ROOT

# Each script's top level run as `python SCRIPT` would run it (its own directory first on
# sys.path, not the repository), under another name than __main__ so that nothing is measured;
# modules imported from the repository are dropped between scripts, so each finds them itself.
_LOAD_EACH = textwrap.dedent("""
    import os, runpy, sys
    repo, scripts = sys.argv[1], sys.argv[2:]
    site = [p for p in sys.path if p and os.path.abspath(p) != repo]
    for script in scripts:
      for name, module in list(sys.modules.items()):
        path = os.path.abspath(getattr(module, "__file__", None) or "/")
        if path.startswith(repo + os.sep) and not path.startswith(sys.prefix + os.sep):
          del sys.modules[name]  # The repository's, not the environment's (.venv in it).
      sys.path[:] = [os.path.dirname(script)] + site
      try:
        runpy.run_path(script, run_name="experiment_script_check")
      except BaseException as e:
        print(f"{os.path.relpath(script, repo)}: {type(e).__name__}: {e}")
    """)


def _experiment_scripts() -> list[str]:
  scripts = []
  for folder, _, files in os.walk(os.path.join(REPO_ROOT, "experiments")):
    for name in files:
      path = os.path.join(folder, name)
      if name.endswith(".py"):
        with open(path) as f:
          if 'if __name__ == "__main__":' in f.read():
            scripts.append(path)
  return sorted(scripts)


def test_every_experiment_script_loads_from_outside_the_repository(tmp_path):
  scripts = _experiment_scripts()
  assert len(scripts) >= 20  # The walk found the experiments.
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  result = subprocess.run([sys.executable, "-c", _LOAD_EACH, REPO_ROOT, *scripts],
                          cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=HANG_TIMEOUT)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout == "", result.stdout

"""pyproject.toml (what `pip install -e .` installs) and requirements.txt (what `make venv`
installs) name the same pinned packages."""

import os
import tomllib

from helpers import REPO_ROOT


def _requirement_lines() -> list[str]:
  with open(os.path.join(REPO_ROOT, "requirements.txt")) as f:
    lines = [line.split("#", 1)[0].strip() for line in f]
  return [line for line in lines if line]


def test_pyproject_pins_what_requirements_txt_pins():
  with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
    project = tomllib.load(f)["project"]
  declared = project["dependencies"] + [
      dep for extra in project["optional-dependencies"].values() for dep in extra]
  assert sorted(declared) == sorted(_requirement_lines())
  assert all("==" in dep for dep in declared)

"""pyproject.toml (what `pip install -e .` installs) and requirements.txt (what `make venv`
installs) name the same pinned packages; the accelerator plugins, the jax they pin."""

import os
import tomllib

from helpers import REPO_ROOT


def _requirement_lines(name: str = "requirements.txt") -> list[str]:
  with open(os.path.join(REPO_ROOT, name)) as f:
    lines = [line.split("#", 1)[0].strip() for line in f]
  return [line for line in lines if line]


def _pyproject() -> dict:
  with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)["project"]


ACCELERATOR_EXTRAS = ("cuda12", "tpu")


def test_pyproject_pins_what_requirements_txt_pins():
  project = _pyproject()
  declared = project["dependencies"] + [
      dep for name, extra in project["optional-dependencies"].items() for dep in extra
      if name not in ACCELERATOR_EXTRAS]
  assert sorted(declared) == sorted(_requirement_lines())
  assert all("==" in dep for dep in declared)


def test_the_accelerator_plugins_are_for_the_pinned_jax():
  # A plugin must be built for the jaxlib it loads into.
  jax_pin = next(line for line in _requirement_lines() if line.startswith("jax=="))
  version = jax_pin.split("==")[1]
  extras = _pyproject()["optional-dependencies"]
  assert [extras[name] for name in ACCELERATOR_EXTRAS] == [
      [f"jax[cuda12]=={version}"], [f"jax[tpu]=={version}"]]
  assert _requirement_lines("requirements-cuda.txt") == [f"jax[cuda12]=={version}"]

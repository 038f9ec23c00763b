"""The README's Python example runs as written (on a tiny model's weights in place of TTSR.npz)."""

import contextlib
import io
import pathlib
import re

import numpy as np

from tiny_configs import random_params
from ttsr_jax import convert

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _python_example(section: str) -> str:
  text = README.read_text()
  start = text.index(f"## {section}\n")
  return re.search(r"```python\n(.*?)```", text[start:], re.DOTALL).group(1)


def test_use_the_model_from_python_runs(tmp_path, monkeypatch):
  np.savez(tmp_path / "TTSR.npz", **convert.export_state_dict(random_params()))
  monkeypatch.chdir(tmp_path)
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    exec(compile(_python_example("Use the model from Python"), str(README), "exec"), {})
  assert printed.getvalue().startswith("(1, 120, 160, 3) (1, 30, 40, 1) (1, 30, 40, ")

"""Shared test set-up: quiet TensorFlow, a persistent XLA cache, and the parity folder."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import pathlib

import jax
import numpy as np
import pytest

# Compiled programs are reused across test processes and runs; CI starts cold but still gains
# within a run because several tests compile identical programs.
jax.config.update("jax_compilation_cache_dir", str(pathlib.Path.home() / ".cache" / "ttsr_jax_xla"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

# ../shared beside the checkout; TTSR_SHARED_DIR points elsewhere (e.g. a copy carried to a GPU).
SHARED_DIR = pathlib.Path(os.environ.get(
    "TTSR_SHARED_DIR", pathlib.Path(__file__).resolve().parents[1].parent / "shared"))
PARITY_DIR = SHARED_DIR / "parity"
DEMO_DIR = SHARED_DIR / "data" / "demo"


def _require(path: pathlib.Path) -> pathlib.Path:
  if not path.exists():
    pytest.skip(f"{path} is absent: the golden arrays live in ../shared beside the checkout")
  return path


@pytest.fixture(scope="session")
def parity_dir() -> pathlib.Path:
  return _require(PARITY_DIR)


@pytest.fixture(scope="session")
def demo_dir() -> pathlib.Path:
  return _require(DEMO_DIR)


def load_case(name: str) -> dict[str, np.ndarray]:
  """Loads one golden `.npz` of ../shared/parity fully into memory (skips if absent)."""
  path = _require(PARITY_DIR / name)
  with np.load(path) as data:
    return {k: data[k] for k in data.files}

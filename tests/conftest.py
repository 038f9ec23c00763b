"""Shared test set-up: TensorFlow's environment and a persistent XLA cache."""

import pathlib

import jax
import pytest

import data_pipeline  # noqa: F401  (sets TensorFlow's environment before a test imports it)
import tiny_runs
from ttsr_jax import train

# Compiled programs are reused across test processes and runs; CI starts cold but still gains
# within a run because several tests compile identical programs.
jax.config.update("jax_compilation_cache_dir", str(pathlib.Path.home() / ".cache" / "ttsr_jax_xla"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(scope="session")
def tiny_config_file(tmp_path_factory) -> pathlib.Path:
  return tiny_runs.write_tiny_run(tmp_path_factory.mktemp("tiny"))



@pytest.fixture(scope="session")
def uninterrupted(tiny_config_file, tmp_path_factory):
  """(workdir, config, returned metrics) of the tiny run from start to end."""
  config = tiny_runs.load_config(tiny_config_file)
  workdir = tmp_path_factory.mktemp("uninterrupted")
  metrics = train.train_and_evaluate(config, workdir)
  return workdir, config, metrics

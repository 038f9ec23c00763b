"""Shared test set-up: TensorFlow's environment and a persistent XLA cache."""

import pathlib

import jax
import pytest
from xdist.scheduler import LoadFileScheduling

import data_pipeline  # noqa: F401  (sets TensorFlow's environment before a test imports it)
import tiny_runs
from ttsr_jax import specs
from ttsr_jax import train

# Compiled programs are reused across test processes and runs; CI starts cold but still gains
# within a run because several tests compile identical programs.
jax.config.update("jax_compilation_cache_dir", str(pathlib.Path.home() / ".cache" / "ttsr_jax_xla"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


# pytest.ini's workers take one group of tests at a time: a test file, so that its module
# fixtures are computed once, except that the loop, report and checkpoint damage tests, which
# share the session's tiny training run (`uninterrupted`), form one group so the run trains once.
WORKER_GROUPS = {"test_train_loop.py": "tiny_run", "test_report.py": "tiny_run",
                 "test_checkpoint_damage.py": "tiny_run"}


def _group(path: str) -> str:
  return WORKER_GROUPS.get(pathlib.PurePath(path).name, path)


class _GroupScheduling(LoadFileScheduling):
  def _split_scope(self, nodeid: str) -> str:
    return _group(super()._split_scope(nodeid))


def pytest_collection_modifyitems(items):
  # Groups holding slow tests first: the workers start on the long work and finish on short
  # files, instead of one worker starting a long group while the other runs out of work.
  slow_groups = {_group(item.nodeid.split("::")[0]) for item in items
                 if item.get_closest_marker("slow")}
  items.sort(key=lambda item: _group(item.nodeid.split("::")[0]) not in slow_groups)


def pytest_xdist_make_scheduler(config, log):
  # Not `--dist loadgroup` with xdist_group marks: pytest-xdist 3.8 names the groups through a
  # node attribute that pytest 9 no longer reads.
  if config.getvalue("dist") == "loadfile":
    return _GroupScheduling(config, log)
  return None


@pytest.fixture(scope="session")
def tiny_config_file(tmp_path_factory) -> pathlib.Path:
  return tiny_runs.write_tiny_run(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def uninterrupted(tiny_config_file, tmp_path_factory):
  """(workdir, config, returned metrics) of the tiny run from start to end."""
  config = tiny_runs.load_config(tiny_config_file)
  workdir = tmp_path_factory.mktemp("uninterrupted")
  metrics = train.train_and_evaluate(specs.run_spec(config), workdir)
  return workdir, config, metrics

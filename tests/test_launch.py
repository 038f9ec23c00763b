"""launch.py as users run it: flag errors, one-line set-up errors, and multi-host training for
real (two processes joined by jax.distributed on this machine's CPU, against one process)."""

import pathlib
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from parity import REORDERED_STEP_ATOL, REORDERED_STEP_RTOL
from tiny_runs import ROOT, load_config, restore_state, subprocess_env, write_tiny_run
from ttsr_jax import specs
from ttsr_jax import train

TRAIN_PAIRS = 8


@pytest.fixture(scope="session")
def launch_config_file(tmp_path_factory) -> pathlib.Path:
  return write_tiny_run(tmp_path_factory.mktemp("tiny_launch"), train_pairs=TRAIN_PAIRS)


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "launch.py", *args], cwd=ROOT,
                        env=env or subprocess_env(), capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # runs launch.py in a subprocess
def test_mistyped_config_field_is_an_error(tmp_path):
  result = _run("--config=configs/demo.py", "--config.optim.learning_rate=1",
                f"--workdir={tmp_path}")
  assert result.returncode != 0
  assert "learning_rate" in result.stderr
  assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow  # runs launch.py in a subprocess
def test_pretrained_config_without_vgg_weights_stops_with_how_to(tmp_path):
  # Without the TensorFlow settings this process inherited: launch.py must make them itself.
  env = {k: v for k, v in subprocess_env().items() if not k.startswith("TF_")}
  env["XDG_CACHE_HOME"] = str(tmp_path / "empty_cache")
  result = _run("--config=configs/exp1_2.py", f"--workdir={tmp_path / 'run'}", env=env)
  assert result.returncode == 1
  assert "python -m ttsr_jax.tools.vgg19" in result.stderr
  assert "Traceback" not in result.stderr
  assert "oneDNN" not in result.stderr  # TensorFlow's log of its CPU kernels: set off in time


@pytest.mark.slow  # runs launch.py in a subprocess
def test_eval_without_checkpoints_is_a_one_line_error(tmp_path):
  result = _run("--config=configs/demo.py", f"--workdir={tmp_path}", "--mode=eval")
  assert result.returncode == 1
  assert f"{tmp_path / 'checkpoints'}: no checkpoints directory" in result.stderr
  assert "Traceback" not in result.stderr


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _shard_indices(log: str) -> set[int]:
  match = re.search(r"reads \d+ of \d+ training examples \(indices \[([\d\s]+)\]\)", log)
  assert match, log[-3000:]
  return {int(i) for i in match.group(1).split()}


@pytest.mark.slow  # two launch.py processes joined by jax.distributed
def test_two_processes_match_one_process(launch_config_file, tmp_path):
  # Two steps (two epochs of one batch holding the whole dataset). With one batch per epoch the
  # global batch has the same examples whatever the process count (only their order differs);
  # the reconstruction loss and the WGAN terms without the gradient penalty, whose interpolation
  # factors are drawn per batch position, are then independent of that order. The larger Adam
  # eps keeps entries whose gradient is float noise from moving by +-lr (see test_sharding.py).
  overrides = {"batch_size": TRAIN_PAIRS, "num_init_epochs": 0, "num_epochs": 2,
               "eval_every": 0, "loss.per_w": 0.0, "loss.tpl_w": 0.0, "loss.gp_lambda": 0.0,
               "optim.eps": 1e-3}
  port = _free_port()
  multi, single = tmp_path / "two_processes", tmp_path / "one_process"
  env = subprocess_env() | {"JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
                            "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  flags = [f"--config={launch_config_file}", f"--workdir={multi}",
           *(f"--config.{name}={value}" for name, value in overrides.items()),
           "--config.distributed.initialize=True",
           f"--config.distributed.coordinator_address=127.0.0.1:{port}",
           "--config.distributed.num_processes=2"]
  processes = [subprocess.Popen([sys.executable, "launch.py", *flags,
                                 f"--config.distributed.process_id={i}"], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for i in range(2)]
  try:
    # The same run on this process's one device, while the two processes work.
    config = load_config(launch_config_file)
    config.update_from_flattened_dict(overrides)
    train.train_and_evaluate(specs.run_spec(config), single)
    # They share the machine with this process and the other test worker: a wide margin.
    logs = [p.communicate(timeout=900)[0] for p in processes]
  finally:
    for p in processes:
      p.kill()
  for p, log in zip(processes, logs):
    assert p.returncode == 0, log[-4000:]
  assert "JAX process 1 of 2, 2 local devices of 4" in logs[1]

  # Each process read its own half of the training set.
  shards = [_shard_indices(log) for log in logs]
  assert len(shards[0]) == len(shards[1]) == TRAIN_PAIRS // 2
  assert not shards[0] & shards[1] and shards[0] | shards[1] == set(range(TRAIN_PAIRS))

  two, one = restore_state(multi, config), restore_state(single, config)
  assert int(two.step) == int(one.step) == 2
  # Four devices sum the batch in another order than one.
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(two)[0],
                          jax.tree_util.tree_leaves(one)):
    np.testing.assert_allclose(a, b, rtol=REORDERED_STEP_RTOL, atol=REORDERED_STEP_ATOL,
                               err_msg=jax.tree_util.keystr(path))

"""launch.py as users run it: flag errors, one-line set-up errors, and multi-host training for
real (two processes joined by jax.distributed on this machine's CPU)."""

import pathlib
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from tiny_runs import ROOT, load_config, restore_state, subprocess_env, write_tiny_run

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
  env = subprocess_env() | {"XDG_CACHE_HOME": str(tmp_path / "empty_cache")}
  result = _run("--config=configs/exp1_2.py", f"--workdir={tmp_path / 'run'}", env=env)
  assert result.returncode == 1
  assert "python -m ttsr_jax.tools.vgg19" in result.stderr
  assert "Traceback" not in result.stderr


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


@pytest.mark.slow  # three launch.py processes, two of them joined by jax.distributed
def test_two_processes_match_one_process_with_four_devices(launch_config_file, tmp_path):
  # Two steps (two epochs of one batch holding the whole dataset). With one batch per epoch the
  # global batch has the same examples whatever the process count (only their order differs);
  # the reconstruction loss and the WGAN terms without the gradient penalty, whose interpolation
  # factors are drawn per batch position, are then independent of that order. The larger Adam
  # eps keeps entries whose gradient is float noise from moving by +-lr (see test_sharding.py).
  overrides = [f"--config={launch_config_file}", f"--config.batch_size={TRAIN_PAIRS}",
               "--config.num_init_epochs=0", "--config.num_epochs=2", "--config.eval_every=0",
               "--config.loss.per_w=0", "--config.loss.tpl_w=0", "--config.loss.gp_lambda=0",
               "--config.optim.eps=1e-3"]
  port = _free_port()
  multi, single = tmp_path / "two_processes", tmp_path / "one_process"
  env = subprocess_env() | {"JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"}
  commands = [
      ([*overrides, f"--workdir={multi}", "--config.distributed.initialize=True",
        f"--config.distributed.coordinator_address=127.0.0.1:{port}",
        "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"],
       env | {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}) for i in range(2)]
  commands.append(([*overrides, f"--workdir={single}"],
                   env | {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}))
  processes = [subprocess.Popen([sys.executable, "launch.py", *args], cwd=ROOT, env=e,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for args, e in commands]
  try:
    # Three processes of their own share the machine with the other test worker: a wide margin.
    logs = [p.communicate(timeout=900)[0] for p in processes]
  finally:
    for p in processes:
      p.kill()
  for p, log in zip(processes, logs):
    assert p.returncode == 0, log[-4000:]
  assert "JAX process 1 of 2, 2 local devices of 4" in logs[1]
  assert "JAX process 0 of 1, 4 local devices of 4" in logs[2]

  # Each process read its own half of the training set.
  shards = [_shard_indices(log) for log in logs[:2]]
  assert len(shards[0]) == len(shards[1]) == TRAIN_PAIRS // 2
  assert not shards[0] & shards[1] and shards[0] | shards[1] == set(range(TRAIN_PAIRS))

  config = load_config(launch_config_file)
  two, one = restore_state(multi, config), restore_state(single, config)
  assert int(two.step) == int(one.step) == 2
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(two)[0],
                          jax.tree_util.tree_leaves(one)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=jax.tree_util.keystr(path))

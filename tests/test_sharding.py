"""The train step run in other layouts equals it on one device with the whole batch: jit over a
mesh of 4 simulated CPU devices, shard_map, `jax.pmap`, and gradient accumulation
(`config.microbatches`). One subprocess with 4 devices runs them all, so that the one-device
whole-batch step they are compared with compiles once."""

import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from parity import CRITIC_SCORE_ATOL, REORDERED_STEP_ATOL, REORDERED_STEP_RTOL
from tiny_runs import subprocess_env
from ttsr_jax import sharding

SCRIPT = textwrap.dedent("""
    import sys
    import jax, numpy as np
    import tiny_configs
    from ttsr_jax import sharding, specs, step

    assert len(jax.devices()) == 4, jax.devices()
    # The main (all-losses) step only: the warm-up step shards the same way with fewer terms.
    def spec(microbatches=1):
      config = tiny_configs.all_losses(train_crop_size=8, batch_size=4)  # D sees 32x32
      config.microbatches = microbatches
      return specs.train_spec(config)

    steps_per_epoch = 1
    vgg_params = step.init_vgg_params(spec().model, jax.random.PRNGKey(1))
    rng = np.random.RandomState(0)
    batches = []
    for _ in range(2):
      hr = rng.uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
      ref = rng.uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
      batches.append(dict(lr=hr[:, ::4, ::4], lrsr=hr * 0.9, hr=hr, ref=ref, refsr=ref * 0.9))

    def mesh_run(mesh, wrap, axis_name, spec):
      state = step.create_train_state(spec, vgg_params, steps_per_epoch)
      rep = sharding.replicated(mesh)
      state, vgg = jax.device_put(state, rep), jax.device_put(vgg_params, rep)
      train_step = wrap(step.make_train_step(spec, steps_per_epoch, warmup=False,
                                             axis_name=axis_name), mesh)
      for batch in batches:
        batch = jax.device_put(batch, sharding.batch_sharding(mesh))
        state, metrics = train_step(state, batch, vgg)
      return jax.device_get((state.g_params, state.d_params, metrics))

    def pmap_run():
      # The step as `jax.pmap` maps it: a leading device axis on every input, the state and
      # the VGG19 parameters replicated, each device's quarter of the batch.
      devices = jax.device_count()
      replicate = lambda tree: jax.tree_util.tree_map(lambda x: np.stack([x] * devices), tree)
      per_device = lambda tree: jax.tree_util.tree_map(
          lambda x: x.reshape(devices, x.shape[0] // devices, *x.shape[1:]), tree)
      train_step = jax.pmap(step.make_train_step(spec(), steps_per_epoch, warmup=False,
                                                 axis_name=sharding.DATA_AXIS),
                            axis_name=sharding.DATA_AXIS)
      state = replicate(jax.device_get(step.create_train_state(spec(), vgg_params,
                                                               steps_per_epoch)))
      vgg = replicate(jax.device_get(vgg_params))
      for batch in batches:
        state, metrics = train_step(state, per_device(batch), vgg)
      first = lambda tree: jax.tree_util.tree_map(lambda x: np.asarray(x[0]), tree)
      return first((state.g_params, state.d_params, metrics))

    one_device = sharding.make_mesh(jax.devices()[:1])
    runs = {
        "one_device": lambda: mesh_run(one_device, sharding.jit_train_step, None, spec()),
        # Two microbatches of 2 (the D inputs, epsilons and hr must stay paired with each sr).
        "microbatches": lambda: mesh_run(one_device, sharding.jit_train_step, None, spec(2)),
        "jit": lambda: mesh_run(sharding.make_mesh(), sharding.jit_train_step, None, spec()),
        "shard_map": lambda: mesh_run(sharding.make_mesh(), sharding.shard_map_train_step,
                                      sharding.DATA_AXIS, spec()),
        "pmap": pmap_run}
    for name, run in runs.items():
      g_params, d_params, metrics = run()
      leaves = jax.tree_util.tree_leaves((g_params, d_params))
      np.savez(f"{sys.argv[1]}/{name}.npz", **{f"param/{i}": x for i, x in enumerate(leaves)},
               **{f"metric/{k}": v for k, v in metrics.items()})
""")


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, dict[str, np.ndarray]]:
  """Parameters and metrics after two all-losses steps in each layout, by layout name."""
  root = pathlib.Path(__file__).resolve().parents[1]
  out = tmp_path_factory.mktemp("layouts")
  env = subprocess_env() | {"XLA_FLAGS": "--xla_force_host_platform_device_count=4",
                            "PYTHONPATH": os.pathsep.join([str(root), str(root / "tests")])}
  # Five compiled steps on a machine that other jobs may share: a wide margin.
  result = subprocess.run([sys.executable, "-c", SCRIPT, str(out)], env=env, cwd=root,
                          capture_output=True, text=True, timeout=1800)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  runs = {}
  for path in out.glob("*.npz"):
    with np.load(path) as data:
      runs[path.stem] = {k: data[k] for k in data.files}
  return runs


def _assert_same_step(got: dict, want: dict, name: str) -> None:
  """The same parameters and metrics up to the float32 rounding of sums in another order."""
  assert got.keys() == want.keys(), name
  for key in want:
    atol = REORDERED_STEP_ATOL if key.startswith("param/") else CRITIC_SCORE_ATOL
    np.testing.assert_allclose(got[key], want[key], rtol=REORDERED_STEP_RTOL, atol=atol,
                               err_msg=f"{name}: {key}")


@pytest.mark.slow  # a subprocess with 4 simulated devices compiles 5 all-losses steps
@pytest.mark.parametrize("layout", ["jit", "shard_map", "pmap"])
def test_four_devices_match_one(layouts, layout):
  _assert_same_step(layouts[layout], layouts["one_device"], layout)


@pytest.mark.slow  # the same subprocess
def test_microbatched_step_matches_whole_batch(layouts):
  """All losses and two D updates: sr, the D inputs, epsilons and hr must stay paired."""
  _assert_same_step(layouts["microbatches"], layouts["one_device"], "microbatches")


def test_batch_not_divisible_by_devices_is_a_clear_error():
  sharding.check_batch_size(6, 2)
  with pytest.raises(ValueError,
                     match=r"batch_size 7 is not divisible by 2 devices x 1 microbatches"):
    sharding.check_batch_size(7, 2)

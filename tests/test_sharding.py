"""Sharded training equals single-device training (4 simulated CPU devices, in a subprocess):
jit over a mesh, shard_map, and `jax.pmap`."""

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from ttsr_jax import sharding

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    import tiny_configs
    from ttsr_jax import sharding, specs, step

    assert len(jax.devices()) == 4, jax.devices()
    # The main (all-losses) step only: the warm-up step shards the same way with fewer terms.
    spec = specs.train_spec(tiny_configs.all_losses(train_crop_size=8, batch_size=4))  # D: 32x32
    steps_per_epoch = 1
    vgg_params = step.init_vgg_params(spec.model, jax.random.PRNGKey(1))
    rng = np.random.RandomState(0)
    batches = []
    for _ in range(2):
      hr = rng.uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
      ref = rng.uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
      batches.append(dict(lr=hr[:, ::4, ::4], lrsr=hr * 0.9, hr=hr, ref=ref, refsr=ref * 0.9))

    def mesh_run(mesh, wrap, axis_name):
      state = step.create_train_state(spec, vgg_params, steps_per_epoch)
      rep = sharding.replicated(mesh)
      state, vgg = jax.device_put(state, rep), jax.device_put(vgg_params, rep)
      train_step = wrap(step.make_train_step(spec, steps_per_epoch, warmup=False,
                                             axis_name=axis_name), mesh)
      for batch in batches:
        batch = jax.device_put(batch, sharding.batch_sharding(mesh))
        state, metrics = train_step(state, batch, vgg)
      return (jax.device_get(state.g_params), jax.device_get(state.d_params),
              float(metrics["loss/total"]))

    def pmap_run():
      # The step as `jax.pmap` maps it: a leading device axis on every input, the state and
      # the VGG19 parameters replicated, each device's quarter of the batch.
      devices = jax.device_count()
      replicate = lambda tree: jax.tree_util.tree_map(lambda x: np.stack([x] * devices), tree)
      per_device = lambda tree: jax.tree_util.tree_map(
          lambda x: x.reshape(devices, x.shape[0] // devices, *x.shape[1:]), tree)
      train_step = jax.pmap(step.make_train_step(spec, steps_per_epoch, warmup=False,
                                                 axis_name=sharding.DATA_AXIS),
                            axis_name=sharding.DATA_AXIS)
      state = replicate(jax.device_get(step.create_train_state(spec, vgg_params,
                                                               steps_per_epoch)))
      vgg = replicate(jax.device_get(vgg_params))
      for batch in batches:
        state, metrics = train_step(state, per_device(batch), vgg)
      first = lambda tree: jax.tree_util.tree_map(lambda x: np.asarray(x[0]), tree)
      return first(state.g_params), first(state.d_params), float(metrics["loss/total"][0])

    single = mesh_run(sharding.make_mesh(jax.devices()[:1]), sharding.jit_train_step, None)
    for name, run in (
        ("jit", lambda: mesh_run(sharding.make_mesh(), sharding.jit_train_step, None)),
        ("shard_map", lambda: mesh_run(sharding.make_mesh(), sharding.shard_map_train_step,
                                       sharding.DATA_AXIS)),
        ("pmap", pmap_run)):
      multi = run()
      for a, b in zip(jax.tree_util.tree_leaves(single[:2]), jax.tree_util.tree_leaves(multi[:2])):
        np.testing.assert_allclose(a, b, atol=1e-5, err_msg=name)
      np.testing.assert_allclose(single[2], multi[2], rtol=1e-5)
      print(name, "OK")
""")


@pytest.mark.slow  # a subprocess with 4 simulated devices compiles 4 steps
def test_four_devices_match_one():
  root = pathlib.Path(__file__).resolve().parents[1]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             PYTHONPATH=os.pathsep.join([str(root), str(root / "tests")]))
  result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=root, capture_output=True,
                          text=True, timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  for name in ("jit", "shard_map", "pmap"):
    assert f"{name} OK" in result.stdout, result.stdout


def test_batch_not_divisible_by_devices_is_a_clear_error():
  sharding.check_batch_size(6, 2)
  with pytest.raises(ValueError,
                     match=r"batch_size 7 is not divisible by 2 devices x 1 microbatches"):
    sharding.check_batch_size(7, 2)

"""Prints what the checkpoint manifest costs next to Orbax's own save and restore.

  python -m bench.checkpoint_manifest [--config ttsr_gan] [--repeats 3]

A TrainState of the config with random entries is saved by Orbax (as training saves it), then its
manifest written (size and SHA-256 of every file), then verified, then the state restored; each
the best of `--repeats` rounds, in seconds, in one process so that the ratios hold on a shared
machine.
"""

import argparse
import importlib
import pathlib
import tempfile
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from ttsr_jax import checkpoint
from ttsr_jax import sharding
from ttsr_jax import specs


def _random_state(target):
  rng = np.random.default_rng(0)
  return jax.tree_util.tree_map(
      lambda s: rng.random(s.shape, dtype=np.float32).astype(s.dtype), target)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="ttsr_gan", help="a module of configs/")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  config = importlib.import_module(f"configs.{args.config}").get_config()
  mesh = sharding.make_mesh(jax.devices()[:1])
  target = checkpoint.abstract_train_state(specs.train_spec(config), mesh)
  state = _random_state(target)
  nbytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(state))
  times = {"orbax save": [], "write manifest": [], "verify": [], "orbax restore": []}
  with tempfile.TemporaryDirectory() as tmp:
    for step in range(1, args.repeats + 1):
      with checkpoint.manager(pathlib.Path(tmp), keep=1) as mngr:
        start = time.perf_counter()
        mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                config=ocp.args.JsonSave(config.to_dict())),
                  force=True)
        times["orbax save"].append(time.perf_counter() - start)
        step_dir = pathlib.Path(tmp) / str(step)
        start = time.perf_counter()
        checkpoint.write_manifest(step_dir)
        times["write manifest"].append(time.perf_counter() - start)
        start = time.perf_counter()
        checkpoint.verify(step_dir)
        times["verify"].append(time.perf_counter() - start)
        start = time.perf_counter()
        jax.block_until_ready(mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target)))["state"])
        times["orbax restore"].append(time.perf_counter() - start)
  print(f"{args.config}: TrainState {nbytes / 2**20:.0f} MiB, best of {args.repeats}")
  for name, values in times.items():
    print(f"  {name:15s} {min(values):7.3f} s")
  print(f"  manifest/save   {min(times['write manifest']) / min(times['orbax save']):7.2f}")
  print(f"  verify/restore  {min(times['verify']) / min(times['orbax restore']):7.2f}")


if __name__ == "__main__":
  main()

"""Data-parallel layout: one mesh axis 'data', the batch split over it, the state replicated."""

from typing import Callable, Optional, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D mesh over `devices` (all devices of all processes by default)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(devices, (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def resolve_microbatches(microbatches: int, batch_size: int, mesh: Mesh) -> int:
  """`config.microbatches` for this machine. 0 picks one sample per device per microbatch on
  CPUs, where that is the fastest and the leanest setting (docs/benchmarks.md), and the whole
  batch at once on GPUs and TPUs, where large batches are efficient; other values are kept."""
  if microbatches:
    return microbatches
  if mesh.devices.flat[0].platform == "cpu":
    return max(1, batch_size // mesh.size)
  return 1


def check_batch_size(batch_size: int, devices: int, microbatches: int = 1) -> None:
  """The batch must split evenly over the devices, and each device's share over the
  microbatches."""
  if microbatches < 1:
    raise ValueError(f"microbatches must be at least 1, got {microbatches}")
  unit = devices * microbatches
  if batch_size % unit:
    raise ValueError(
        f"batch_size {batch_size} is not divisible by {devices} devices x {microbatches} "
        f"microbatches; choose a multiple of {unit} (e.g. {unit * max(1, batch_size // unit)})")


def jit_train_step(train_step: Callable, mesh: Mesh) -> Callable:
  """jit over the mesh: (state, batch, vgg_params) -> (state, metrics), state donated.

  `train_step` is built without an axis name; XLA partitions the batch dimension and inserts
  the gradient all-reduces itself.
  """
  rep, data = replicated(mesh), batch_sharding(mesh)
  return jax.jit(train_step, in_shardings=(rep, data, rep), out_shardings=(rep, rep),
                 donate_argnums=0)


def shard_map_train_step(train_step: Callable, mesh: Mesh) -> Callable:
  """The same step as an explicit per-device program; `train_step` must be built with
  `axis_name=DATA_AXIS` so it averages gradients and metrics itself (the pmap style).

  `check_vma=False` keeps pmap's semantics: with it on, JAX would already sum the gradients of
  replicated parameters over devices, and the step's own `pmean` would then see a sum.
  """
  mapped = jax.shard_map(train_step, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P()),
                         out_specs=(P(), P()), check_vma=False)
  return jax.jit(mapped, donate_argnums=0)

"""Times the parts of one all-losses train step, each jitted alone, in one process.

  python -m bench.step_parts [--batch 9] [--microbatches 1,9] [--rounds 2]

Default model (64 ch, 16+16+8+4), 160x160 patches, random weights and inputs, the step's own
functions (`ttsr_jax.step`) run the way the step runs them with `config.microbatches` = M:

- `g_forward`: the generator's forward pass alone (sr for D; with M > 1 the step's second one);
- `d_update`: one WGAN-GP update of D (the step takes `gan_k` of them);
- `g_rec`, `g_rec_per`, `g_rec_per_tpl`, `g_all`: the generator's gradients with the loss terms
  added one at a time, so each difference is one term's cost (VGG19 passes, the LTE copy, D);
- `step`: the whole train step.

Rounds interleave the parts (every part once per round), and the table shows each part's
median; a 4096^2 float32 matmul is timed in every round too, so the share of the machine the
process had is visible. XLA's FLOP count is of each part's whole-batch program.
"""

import argparse
import dataclasses
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from bench.train_step import VARIANTS, matmul_flops_per_s
from configs import default
from ttsr_jax import specs, step
from ttsr_jax.models import layers

TERMS = {"g_rec": ("rec",), "g_rec_per": ("rec", "per"), "g_rec_per_tpl": ("rec", "per", "tpl"),
         "g_all": ("rec", "per", "tpl", "adv")}


def _spec(batch: int, microbatches: int) -> specs.TrainSpec:
  config = default.get_config()
  config.loss.update(VARIANTS["all"][0])
  config.batch_size, config.microbatches, config.num_init_epochs = batch, microbatches, 0
  return specs.train_spec(config)


def _parts(spec: specs.TrainSpec) -> dict[str, Callable]:
  """name -> function of (state, batch, vgg_params)."""
  it = step.make_iteration(spec, 1000, warmup=False)
  count = spec.microbatches

  def g_forward(state, batch, vgg_params):
    if count == 1:
      return step.generator_forward(it.nets.model, state.g_params, batch)[0]
    with layers.loop_body():
      return jax.lax.map(lambda b: step.generator_forward(it.nets.model, state.g_params, b)[0],
                         step.split_microbatches(batch, count))

  def d_update(state, batch, vgg_params):
    eps = jnp.linspace(0.1, 0.9, batch["hr"].shape[0])
    return step.discriminator_update(it, state.d_params, state.d_opt_state, batch["lrsr"],
                                     batch["hr"], eps)[2]

  def g_gradients(terms):
    partial = dataclasses.replace(it, weights={k: it.weights[k] for k in terms})
    return lambda state, batch, vgg_params: step.generator_gradients(
        partial, state.g_params, vgg_params, state.d_params, batch)

  parts = {"g_forward": g_forward, "d_update": d_update}
  parts.update({name: g_gradients(terms) for name, terms in TERMS.items()})
  parts["step"] = step.make_train_step(spec, 1000, warmup=False)
  return parts


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, default=9)
  parser.add_argument("--microbatches", default="1,9", help="comma-separated M values")
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--parts", default="", help="comma-separated subset of the parts")
  args = parser.parse_args()

  rng = np.random.RandomState(0)
  p = 160
  hr = rng.uniform(-1, 1, (args.batch, p, p, 3)).astype(np.float32)
  ref = rng.uniform(-1, 1, (args.batch, p, p, 3)).astype(np.float32)
  data = dict(lr=hr[:, ::4, ::4], lrsr=hr, hr=hr, ref=ref, refsr=ref)
  first = _spec(args.batch, 1)
  vgg_params = step.init_vgg_params(first.model, jax.random.PRNGKey(1))
  state = step.create_train_state(first, vgg_params, 1000)

  chosen = lambda name: not args.parts or name in args.parts.split(",")
  compile_ = lambda fn: jax.jit(fn).lower(state, data, vgg_params).compile()
  compiled = {}
  for m in (int(m) for m in args.microbatches.split(",")):
    for name, fn in _parts(_spec(args.batch, m)).items():
      if chosen(name):
        compiled[name, m] = compile_(fn)
  flops = {}
  for name, fn in _parts(_spec(args.batch, 1)).items():
    if chosen(name):
      cost = (compiled[name, 1] if (name, 1) in compiled else compile_(fn)).cost_analysis()
      flops[name] = (cost[0] if isinstance(cost, list) else cost).get("flops", 0.0)

  times = {key: [] for key in compiled}
  matmul = []
  for _ in range(args.rounds + 1):  # the first round warms up
    matmul.append(matmul_flops_per_s())
    for key, fn in compiled.items():
      t = time.perf_counter()
      jax.block_until_ready(fn(state, data, vgg_params))
      times[key].append(time.perf_counter() - t)
  rate = float(np.median(matmul[1:]))
  print(f"batch {args.batch}; matmul {rate / 1e9:.0f} GFLOP/s (rounds: "
        f"{', '.join(f'{m / 1e9:.0f}' for m in matmul)})")
  print(f"{'part':16} {'micro':>5} {'s':>8} {'GFLOP':>8} {'GFLOP/s':>8} {'of matmul':>9}")
  for (name, m), ts in times.items():
    s = float(np.median(ts[1:]))
    f = flops.get(name, float("nan"))
    print(f"{name:16} {m:>5} {s:>8.2f} {f / 1e9:>8.0f} {f / s / 1e9:>8.1f} "
          f"{f / s / rate:>9.0%}", flush=True)


if __name__ == "__main__":
  main()

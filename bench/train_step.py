"""Prints train-step time, XLA's compiled memory and achieved FLOP/s for the default model.

  python -m bench.train_step [--batch 9] [--steps 3] [--variants rec,all,all_remat,all_fast,...]
                             [--microbatches 1,3,9]

Default model (64 ch, 16+16+8+4), 160x160 patches (LR 40x40), random weights and inputs. Each
variant runs in its own process (so its peak RSS is its own; `--same_process` saves the start-ups):
compile, one warm-up step, then the median of `--steps` timed steps. Memory is XLA's compiled
memory analysis of the jitted step (arguments + outputs + temporaries; donated state counted
once). FLOPs are XLA's cost analysis of the step without microbatches (it counts a loop body
once; with microbatches the same arithmetic runs, plus a generator forward with the adversarial
loss), compared with a 4096^2 float32 matmul measured in the same process.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

VARIANTS = {
    # name: (loss weights, model overrides)
    "rec": (dict(rec_w=1.0), {}),
    "all": (dict(rec_w=1.0, per_w=1e-2, tpl_w=1e-2, adv_w=1e-3), {}),
    "rec_remat": (dict(rec_w=1.0), dict(remat=True)),
    "all_remat": (dict(rec_w=1.0, per_w=1e-2, tpl_w=1e-2, adv_w=1e-3), dict(remat=True)),
    "all_fast": (dict(rec_w=1.0, per_w=1e-2, tpl_w=1e-2, adv_w=1e-3), dict(precision="fast")),
    "all_remat_fast": (dict(rec_w=1.0, per_w=1e-2, tpl_w=1e-2, adv_w=1e-3),
                       dict(remat=True, precision="fast")),
}


def matmul_flops_per_s() -> float:
  import jax
  n = 4096
  a = jax.random.normal(jax.random.key(0), (n, n))
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  times = []
  for _ in range(3):
    t = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * n ** 3 / min(times)


def cpu_name() -> str:
  """The CPU's model name, family/model numbers (virtual machines often name only the vendor's
  line, e.g. 'AMD EPYC'; family 25 model 17 is Zen 4), cores and widest x86 vector extension,
  from /proc/cpuinfo; '?' where it cannot be read."""
  try:
    with open("/proc/cpuinfo") as f:
      info = {key.strip(): value for key, value in
              (line.split(":", 1) for line in f if ":" in line)}
  except OSError:
    return "?"
  flags = set(info.get("flags", "").split())
  vector = next((ext for ext in ("avx512f", "avx2", "avx") if ext in flags), "no AVX")
  field = lambda key: info.get(key, "?").strip()
  return (f"{field('model name')} (family {field('cpu family')} model {field('model')}), "
          f"{os.cpu_count()} cores, {vector}")


def build_step(name: str, batch: int, microbatches: int):
  """(spec, mesh, the variant's jitted train step, (state, data, vgg_params)) on random inputs."""
  import jax
  import numpy as np
  from configs import default
  from ttsr_jax import sharding, specs, step

  weights, model = VARIANTS[name]
  config = default.get_config()
  config.loss.update(dict(rec_w=0.0, per_w=0.0, tpl_w=0.0, adv_w=0.0) | weights)
  config.model.update(model)
  config.batch_size = batch
  config.microbatches = microbatches
  config.num_init_epochs = 0
  mesh = sharding.make_mesh()
  sharding.check_batch_size(batch, mesh.size, microbatches)
  spec = specs.train_spec(config)
  vgg_params = step.init_vgg_params(spec.model, jax.random.PRNGKey(1))
  state = jax.device_put(step.create_train_state(spec, vgg_params, 1000),
                         sharding.replicated(mesh))
  rng = np.random.RandomState(0)
  p = 4 * config.train_crop_size
  hr = rng.uniform(-1, 1, (batch, p, p, 3)).astype(np.float32)
  ref = rng.uniform(-1, 1, (batch, p, p, 3)).astype(np.float32)
  data = jax.device_put(dict(lr=hr[:, ::4, ::4], lrsr=hr, hr=hr, ref=ref, refsr=ref),
                        sharding.batch_sharding(mesh))
  train_step = sharding.jit_train_step(step.make_train_step(spec, 1000, warmup=False), mesh)
  return spec, mesh, train_step, (state, data, vgg_params)


def run_variant(name: str, batch: int, microbatches: int, steps: int) -> dict:
  import dataclasses

  import jax
  import numpy as np
  from ttsr_jax import sharding, step

  spec, mesh, train_step, (state, data, vgg_params) = build_step(name, batch, microbatches)
  t = time.perf_counter()
  compiled = train_step.lower(state, data, vgg_params).compile()
  compile_s = time.perf_counter() - t
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  if microbatches > 1:
    whole = dataclasses.replace(spec, microbatches=1)
    cost = sharding.jit_train_step(step.make_train_step(whole, 1000, warmup=False), mesh).lower(
        state, data, vgg_params).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  times = []
  if steps:  # --steps 0: compile and analyse only (e.g. 'fast' on a CPU, where bf16 is slow)
    state, metrics = compiled(state, data, vgg_params)
    jax.block_until_ready(metrics)
  for _ in range(steps):
    t = time.perf_counter()
    state, metrics = compiled(state, data, vgg_params)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  device = jax.devices()[0]
  step_s = float(np.median(times)) if times else float("nan")
  stats = device.memory_stats() or {}
  return dict(
      variant=name, batch=batch, microbatches=microbatches, device=device.device_kind,
      compile_s=compile_s, step_s=step_s,
      arg_gb=mem.argument_size_in_bytes / 1e9, out_gb=mem.output_size_in_bytes / 1e9,
      temp_gb=mem.temp_size_in_bytes / 1e9,
      alias_gb=mem.alias_size_in_bytes / 1e9,
      total_gb=(mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
                + mem.temp_size_in_bytes) / 1e9,
      peak_device_gb=stats.get("peak_bytes_in_use", 0) / 1e9,
      gflop=cost.get("flops", 0.0) / 1e9,
      achieved_gflops=cost.get("flops", 0.0) / 1e9 / step_s,
      matmul_gflops=matmul_flops_per_s() / 1e9 if steps else float("nan"),
      cpu=cpu_name(),
      peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", default="9", help="comma-separated global batch sizes")
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--variants", default="rec,all",
                      help=f"comma-separated: {', '.join(VARIANTS)}")
  parser.add_argument("--microbatches", default="1",
                      help="comma-separated config.microbatches values (gradient accumulation)")
  parser.add_argument("--same_process", action="store_true",
                      help="run every variant in this process: saves a start-up per variant "
                           "(GPU), but peak RSS and device peak become running maxima")
  parser.add_argument("--only", help=argparse.SUPPRESS)  # one variant, in a child process
  args = parser.parse_args()
  if args.only:
    print(json.dumps(run_variant(args.only, int(args.batch), int(args.microbatches), args.steps)))
    return
  print(f"{'variant':16} {'batch':>5} {'micro':>5} {'step s':>8} {'compile s':>9} "
        f"{'XLA mem GB':>10} {'(arg/out/tmp)':>18} {'dev peak GB':>11} {'RSS GB':>7} "
        f"{'GFLOP':>7} {'GFLOP/s':>8} {'matmul GFLOP/s':>14} {'of matmul':>9}  device",
        flush=True)
  for batch in args.batch.split(","):
    for name in args.variants.split(","):
      for microbatches in args.microbatches.split(","):
        if args.same_process:
          _print_row(run_variant(name, int(batch), int(microbatches), args.steps))
        else:
          _run_child(name, batch, microbatches, args.steps)


def _run_child(name: str, batch: str, microbatches: str, steps: int) -> None:
  out = subprocess.run([sys.executable, "-m", "bench.train_step", "--only", name, "--batch",
                        batch, "--microbatches", microbatches, "--steps", str(steps)],
                       capture_output=True, text=True,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  if out.returncode:
    last_line = (out.stderr.strip().splitlines() or ["?"])[-1]
    print(f"{name:16} {batch:>5} {microbatches:>5} failed: {last_line}", flush=True)
    return
  _print_row(json.loads(out.stdout.strip().splitlines()[-1]))


def _print_row(r: dict) -> None:
  print(f"{r['variant']:16} {r['batch']:>5} {r['microbatches']:>5} {r['step_s']:>8.2f} "
        f"{r['compile_s']:>9.1f} {r['total_gb']:>10.2f} "
        f"{r['arg_gb']:>6.2f}/{r['out_gb']:.2f}/{r['temp_gb']:.2f} "
        f"{r['peak_device_gb']:>11.2f} {r['peak_rss_gb']:>7.2f} {r['gflop']:>7.0f} "
        f"{r['achieved_gflops']:>8.1f} {r['matmul_gflops']:>14.1f} "
        f"{r['achieved_gflops'] / r['matmul_gflops']:>9.0%}  {r['device']} ({r['cpu']})",
        flush=True)


if __name__ == "__main__":
  main()

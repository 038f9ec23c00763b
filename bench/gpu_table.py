"""One table of training and inference throughput per precision policy, all in this process.

  python -m bench.gpu_table [--precisions exact,fast] [--batches 6,32,max] [--steps 5]
                            [--cases demo,720p,cufed5] [--inference_precisions exact]
                            [--search_modes exact,factored,coarse] [--smoke]
                            [--xla_variants 'OPTION=VALUE;...']

Training: the paper model (64 ch, 16+16+8+4) with all four losses and GAN_k 2 on 160x160
patches, random weights and inputs. For every (precision, batch): compile, one warm-up step,
then the median of `--steps` timed steps; samples/s; achieved TFLOP/s (XLA's cost analysis of
the compiled step over the step time) and its share of the device's peak for the policy's
dtype (PEAK_TFLOPS: float32 without tensor cores for 'exact', dense bfloat16 for 'fast', whose
LTE and search stay float32); XLA's compiled memory (arguments + outputs + temporaries, donated
state once) and the device's peak bytes in use so far (a running maximum over the process).
`max` is the largest batch expected to fit: XLA's memory at the first two batches, extrapolated
linearly to 90 % of the device memory, then lowered by a sixth after each out-of-memory error.
`--xla_variants` adds, at each listed batch, one row per XLA option compiled into that step alone
(`Lowered.compile(compiler_options=...)`, so every variant runs in this one process), e.g.
`--xla_variants 'xla_gpu_autotune_level=0;xla_gpu_enable_command_buffer=;
xla_gpu_enable_latency_hiding_scheduler=false'` against the row with XLA's defaults.

Inference (in `--inference_precisions` and each of `--search_modes`, the eval config's search
chunk): `demo` is the shipped pair (output 500x352), `720p` the same photos at output 1280x720
with a 1280x720 reference, `cufed5` the demo LR with its reference five times on the 2500x500
canvas of CUFED5's five-reference protocol. First call (compilation included) and steady-state
seconds, XLA's compiled memory.

`--smoke` runs the same code on a tiny model (8 ch, one block per stage, 32x32 patches) at small
batches, to check the script on a CPU.
"""

import argparse
import itertools
import time
from typing import Any, Optional

import jax
import numpy as np

from bench import search_memory
from configs import default
from data_pipeline import samples
from ttsr_jax import predict, sharding, specs, step

# Dense peak TFLOP/s by device-kind substring (vendor data sheets; SXM parts): 'exact' runs
# float32 at Precision.HIGHEST (no TF32 tensor cores), 'fast' mostly bfloat16.
PEAK_TFLOPS = {
    "H200": {"exact": 67.0, "fast": 989.0},
    "H100": {"exact": 67.0, "fast": 989.0},
    "A100": {"exact": 19.5, "fast": 312.0},
}
ALL_LOSSES = dict(rec_w=1.0, per_w=1e-2, tpl_w=1e-2, adv_w=1e-3, gan_k=2)
_MEMORY_HEADROOM = 0.9


def _config(precision: str, batch: int, smoke: bool):
  config = default.get_config()
  config.loss.update(ALL_LOSSES)
  config.model.precision = precision
  config.batch_size = batch
  config.num_init_epochs = 0
  if smoke:
    config.model.n_feats = 8
    config.model.num_res_blocks = (1, 1, 1, 1)
    config.train_crop_size = 8
  return config


def _peak_tflops(device_kind: str, precision: str) -> Optional[float]:
  for name, peaks in PEAK_TFLOPS.items():
    if name in device_kind:
      return peaks[precision]
  return None


def _xla_bytes(compiled) -> int:
  m = compiled.memory_analysis()
  return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
          + m.temp_size_in_bytes)


class TrainBench:
  """Compiles and times the all-losses step of one precision policy at any batch size."""

  def __init__(self, precision: str, smoke: bool):
    self.precision, self.smoke = precision, smoke
    self.mesh = sharding.make_mesh()
    config = _config(precision, 1, smoke)
    spec = specs.train_spec(config)
    self.vgg = jax.device_put(step.init_vgg_params(spec.model, jax.random.PRNGKey(1)),
                              sharding.replicated(self.mesh))
    self.state = jax.device_put(step.create_train_state(spec, self.vgg, 1000),
                                sharding.replicated(self.mesh))
    self.memory: dict[int, int] = {}  # batch -> XLA bytes, for the `max` extrapolation

  def _batch(self, batch: int, config):
    rng = np.random.RandomState(0)
    p = 4 * config.train_crop_size
    hr = rng.uniform(-1, 1, (batch, p, p, 3)).astype(np.float32)
    ref = rng.uniform(-1, 1, (batch, p, p, 3)).astype(np.float32)
    return jax.device_put(dict(lr=hr[:, ::4, ::4], lrsr=hr, hr=hr, ref=ref, refsr=ref),
                          sharding.batch_sharding(self.mesh))

  def run(self, batch: int, steps: int, xla_option: Optional[tuple[str, Any]] = None) -> dict:
    """`xla_option`: (name, value) of an XLA option compiled into this step only."""
    config = _config(self.precision, batch, self.smoke)
    data = self._batch(batch, config)
    train_step = sharding.jit_train_step(
        step.make_train_step(specs.train_spec(config), 1000, warmup=False), self.mesh)
    t = time.perf_counter()
    compiled = train_step.lower(self.state, data, self.vgg).compile(
        dict([xla_option]) if xla_option else None)
    compile_s = time.perf_counter() - t
    xla_bytes = _xla_bytes(compiled)
    if xla_option is None:
      self.memory[batch] = xla_bytes
    cost = compiled.cost_analysis()
    flops = (cost[0] if isinstance(cost, list) else cost).get("flops", 0.0)
    state = jax.tree_util.tree_map(lambda x: x.copy(), self.state)  # the step donates it
    state, metrics = compiled(state, data, self.vgg)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
      t = time.perf_counter()
      state, metrics = compiled(state, data, self.vgg)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - t)
    del state
    step_s = float(np.median(times))
    device = jax.devices()[0]
    peak = _peak_tflops(device.device_kind, self.precision)
    tflops = flops / step_s / 1e12
    return dict(precision=self.precision, batch=batch, compile_s=compile_s, step_s=step_s,
                samples_per_s=batch / step_s, tflops=tflops,
                peak_pct=100 * tflops / peak if peak else float("nan"),
                xla_gb=xla_bytes / 1e9, device_peak_gb=_device_peak_gb(),
                xla=f"{xla_option[0]}={xla_option[1]}" if xla_option else "defaults")

  def largest_batch(self, limit: Optional[float]) -> Optional[int]:
    """The batch XLA's memory at two measured batches extrapolates to 90 % of `limit` bytes."""
    if not limit or len(self.memory) < 2:
      return None
    (b1, m1), (b2, m2) = sorted(self.memory.items())[:2]
    per_sample = (m2 - m1) / (b2 - b1)
    if per_sample <= 0:
      return None
    return int((_MEMORY_HEADROOM * limit - (m1 - per_sample * b1)) / per_sample)


def _device_peak_gb() -> float:
  return (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use", 0) / 1e9


def _inference_images(case: str) -> dict[str, np.ndarray]:
  if case == "cufed5":
    lr, ref = search_memory._images("demo")  # pylint: disable=protected-access
    ref = samples.stitch_references([ref] * 5)
  else:
    lr, ref = search_memory._images(case)  # pylint: disable=protected-access
  return predict.prepare_inputs(lr, ref)


def run_inference(precision: str, search_mode: str, case: str, smoke: bool) -> dict:
  config = _config(precision, 1, smoke)
  model = specs.model_spec(config.model).build(search_chunk_size=config.eval.search_chunk_size,
                                               search_mode=search_mode)
  params = search_memory._random_params(model)  # pylint: disable=protected-access
  images = _inference_images(case)
  inputs = [samples.normalize(images[k])[None] for k in ("lr", "lrsr", "ref", "refsr")]
  xla_gb = _xla_bytes(predict.sr_function(model).lower(params, *inputs).compile()) / 1e9
  times = []
  for _ in range(2):
    t = time.perf_counter()
    sr = predict.super_resolve(model, params, images).sr
    times.append(time.perf_counter() - t)
  return dict(precision=precision, search=search_mode, case=case,
              out=f"{sr.shape[1]}x{sr.shape[0]}",
              ref=f"{images['ref'].shape[1]}x{images['ref'].shape[0]}", first_s=times[0],
              second_s=times[1], xla_gb=xla_gb, device_peak_gb=_device_peak_gb())


def _xla_option(text: str) -> tuple[str, Any]:
  """'name=value' -> (name, value) as XLA's options want it: true/false as bool, digits as int."""
  name, value = text.strip().split("=", 1)  # ValueError without '='
  if value.lower() in ("true", "false"):
    return name, value.lower() == "true"
  return name, int(value) if value.lstrip("-").isdigit() else value


def _is_out_of_memory(error: Exception) -> bool:
  return "RESOURCE_EXHAUSTED" in str(error) or "out of memory" in str(error).lower()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--precisions", default="exact,fast")
  parser.add_argument("--batches", default="6,32,max",
                      help="comma-separated batch sizes; 'max' (last) extrapolates from the "
                           "first two")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--cases", default="demo,720p,cufed5", help="inference cases; '' = none")
  parser.add_argument("--inference_precisions", default="exact",
                      help="policies to run the inference cases in")
  parser.add_argument("--search_modes", default="exact,factored,coarse",
                      help="search modes to run the inference cases in")
  parser.add_argument("--smoke", action="store_true", help="a tiny model, to check the script")
  parser.add_argument("--xla_variants", default="",
                      help="';'-separated OPTION=VALUE XLA options, each measured alone at "
                           "every listed batch (VALUE may be empty)")
  parser.add_argument("--memory_limit_gb", type=float,
                      help="device memory for 'max' (default: the device's own limit; CPUs "
                           "report none)")
  args = parser.parse_args()
  try:
    xla_variants = [_xla_option(v) for v in args.xla_variants.split(";") if v.strip()]
  except ValueError:
    parser.error(f"--xla_variants {args.xla_variants!r}: expected OPTION=VALUE;OPTION=VALUE...")
  device = jax.devices()[0]
  print(f"device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}"
        f"{', SMOKE (tiny model)' if args.smoke else ''}", flush=True)
  precisions = args.precisions.split(",")
  batches = args.batches.split(",")
  benches = {p: TrainBench(p, args.smoke) for p in precisions}

  print(f"{'precision':9} {'batch':>5} {'step s':>8} {'samples/s':>9} {'TFLOP/s':>8} "
        f"{'% peak':>6} {'XLA GB':>7} {'dev peak GB':>11} {'compile s':>9}  XLA options",
        flush=True)

  def train_row(precision: str, batch: int, xla_option=None) -> None:
    r = benches[precision].run(batch, args.steps, xla_option)
    print(f"{r['precision']:9} {r['batch']:>5} {r['step_s']:>8.3f} {r['samples_per_s']:>9.1f} "
          f"{r['tflops']:>8.2f} {r['peak_pct']:>6.1f} {r['xla_gb']:>7.2f} "
          f"{r['device_peak_gb']:>11.2f} {r['compile_s']:>9.1f}  {r['xla']}", flush=True)

  for batch in (b for b in batches if b != "max"):
    for precision in precisions:
      train_row(precision, int(batch))
      for xla_option in xla_variants:
        train_row(precision, int(batch), xla_option)

  if args.cases:
    print(f"\n{'precision':9} {'search':8} {'case':7} {'output':>10} {'reference':>10} "
          f"{'first s':>8} {'second s':>9} {'XLA GB':>7} {'dev peak GB':>11}", flush=True)
    for precision, search_mode, case in itertools.product(
        args.inference_precisions.split(","), args.search_modes.split(","),
        args.cases.split(",")):
      r = run_inference(precision, search_mode, case, args.smoke)
      print(f"{r['precision']:9} {r['search']:8} {r['case']:7} {r['out']:>10} {r['ref']:>10} "
            f"{r['first_s']:>8.2f} {r['second_s']:>9.3f} {r['xla_gb']:>7.2f} "
            f"{r['device_peak_gb']:>11.2f}", flush=True)

  if "max" in batches:
    print("largest batch that fits:", flush=True)
    for precision in precisions:
      limit = (args.memory_limit_gb * 1e9 if args.memory_limit_gb
               else (device.memory_stats() or {}).get("bytes_limit"))
      batch = benches[precision].largest_batch(limit)
      if batch is None:
        print(f"{precision:9}   max: skipped (needs two batches whose memory grows and a memory "
              "limit; --memory_limit_gb on a CPU)", flush=True)
        continue
      for _ in range(3):
        try:
          train_row(precision, batch)
          break
        except Exception as error:  # pylint: disable=broad-except  # only out-of-memory is retried
          if not _is_out_of_memory(error):
            raise
          print(f"{precision:9} {batch:>5} out of memory", flush=True)
          batch = batch * 5 // 6


if __name__ == "__main__":
  main()

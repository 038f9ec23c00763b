"""Prints time and peak memory of TTSR inference (default model size, random weights).

  python -m bench.search_memory [--cases demo,720p,cufed5,4k] [--chunk 1024] [--tile 768]
                                [--halo 16] [--cli]

Cases: `demo` is the shipped pair of assets/demo (LR 125x88 -> output 500x352, reference
500x370 cropped to 500x368); `720p` resizes the same photos to LR 320x180 (output 1280x720) and
a 1280x720 reference, which needs the chunked exact search (the whole relevance matrix would
be 57600 x 57600 floats, 13 GB); `cufed5` is the paper's five-reference protocol's shape (LR
125x83, five 500x500 references stitched into 500x2500); `4k` is LR 960x540 (output 3840x2160)
with a 1280x720 reference; `12mp` is LR 480x270 (output 1920x1080) with a 4000x3000 reference
(a phone photo; the `exact` search needs 6.9 GB of unfolded keys for it). `--tile 0` is the
whole-image (untiled) run. Each case runs in its own process so its peak RSS is its own; the
first call includes compilation, the second is the steady-state time (`--once` skips it for
long cases). `--cli` times the whole `python -m ttsr_jax.infer` command instead (reading PNGs,
compiling, writing the PNG).
"""

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

DEMO = pathlib.Path(__file__).resolve().parents[1] / "assets" / "demo"
# (LR HxW, reference HxW, references stitched)
CASES = {"demo": None, "720p": ((180, 320), (720, 1280), 1), "cufed5": ((83, 125), (500, 500), 5),
         "4k": ((540, 960), (720, 1280), 1), "12mp": ((270, 480), (3000, 4000), 1)}


def _images(case: str):
  import numpy as np
  from data_pipeline import files, samples
  lr, ref = files.read_rgb(DEMO / "lr" / "0.png"), files.read_rgb(DEMO / "ref" / "0.png")
  if CASES[case] is not None:
    (lh, lw), (rh, rw), count = CASES[case]
    lr, ref = samples.resize_bicubic(lr, lh, lw), samples.resize_bicubic(ref, rh, rw)
    if count > 1:
      ref = samples.stitch_references([ref] * count)
  return np.ascontiguousarray(lr), np.ascontiguousarray(ref)


def _random_params(model):
  """Random weights without compiling `model.init` (its compilation would dominate peak RSS,
  and a real run restores a checkpoint instead)."""
  import jax
  import numpy as np
  from ttsr_jax import step
  rng = np.random.default_rng(0)
  shapes = jax.eval_shape(model.init, jax.random.key(0), *step.example_inputs())["params"]
  return jax.tree_util.tree_map(
      lambda s: rng.uniform(-0.05, 0.05, s.shape).astype(s.dtype), shapes)


def run_case(case: str, chunk: int, tile: int, halo: int, runs: int) -> dict:
  from configs import default
  from ttsr_jax import predict, specs

  model = specs.model_spec(default.get_config().model).build(search_chunk_size=chunk)
  params = _random_params(model)
  images = predict.prepare_inputs(*_images(case))
  times = []
  for _ in range(runs):
    t = time.perf_counter()
    sr = predict.super_resolve(model, params, images, tile=tile, halo=halo).sr
    times.append(time.perf_counter() - t)
  tiles = len(predict.tile_plan(images["lr"].shape[:2], tile, halo))
  return dict(case=case, chunk=chunk, out=f"{sr.shape[1]}x{sr.shape[0]}",
              ref=f"{images['ref'].shape[1]}x{images['ref'].shape[0]}", tiles=tiles,
              first_s=times[0], second_s=times[-1] if runs > 1 else float("nan"),
              peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)


def run_cli(case: str, chunk: int, tile: int, halo: int, runs: int) -> dict:
  """The whole command on PNG files, with an exported random-weight checkpoint."""
  import jax
  import numpy as np
  from PIL import Image
  from configs import default
  from ttsr_jax import convert, specs, step

  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    model = specs.model_spec(default.get_config().model).build()
    params = jax.jit(model.init)(jax.random.key(0), *step.example_inputs())["params"]
    np.savez(tmp / "ttsr.npz", **convert.export_state_dict(jax.device_get(params)))
    lr, ref = _images(case)
    Image.fromarray(lr).save(tmp / "lr.png")
    Image.fromarray(ref).save(tmp / "ref.png")
    command = [sys.executable, "-m", "ttsr_jax.infer", "--checkpoint", str(tmp / "ttsr.npz"),
               "--lr", str(tmp / "lr.png"), "--ref", str(tmp / "ref.png"), "--out",
               str(tmp / "sr.png"), "--search_chunk_size", str(chunk), "--tile", str(tile),
               "--halo", str(halo)]
    t = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    wall = time.perf_counter() - t
  child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6
  return dict(case=case, chunk=chunk, out="cli", ref="", tiles=0, first_s=wall,
              second_s=float("nan"), peak_rss_gb=child)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--cases", default="demo,720p")
  parser.add_argument("--chunk", type=int, default=1024, help="LR positions per relevance block")
  parser.add_argument("--tile", type=int, default=768, help="tile side, output pixels; 0: none")
  parser.add_argument("--halo", type=int, default=16, help="LR pixels around each tile")
  parser.add_argument("--once", action="store_true", help="one call (no steady-state time)")
  parser.add_argument("--cli", action="store_true")
  parser.add_argument("--only", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.only:
    result = (run_cli if args.cli else run_case)(args.only, args.chunk, args.tile, args.halo,
                                                 1 if args.once else 2)
    print(json.dumps(result))
    return
  print(f"{'case':6} {'output':>10} {'reference':>10} {'chunk':>6} {'tile':>5} {'halo':>4} "
        f"{'tiles':>5} {'first s':>8} {'second s':>9} {'peak RSS GB':>11}")
  for case in args.cases.split(","):
    command = [sys.executable, "-m", "bench.search_memory", "--only", case, "--chunk",
               str(args.chunk), "--tile", str(args.tile), "--halo", str(args.halo)]
    command += ["--cli"] * args.cli + ["--once"] * args.once
    out = subprocess.run(command, capture_output=True, text=True,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    if out.returncode:
      print(f"{case:6} failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
      continue
    r = json.loads(out.stdout.strip().splitlines()[-1])
    label = "CLI" if args.cli else r["out"]
    print(f"{r['case']:6} {label:>10} {r['ref']:>10} {r['chunk']:>6} {args.tile:>5} "
          f"{args.halo:>4} {r['tiles']:>5} {r['first_s']:>8.1f} {r['second_s']:>9.1f} "
          f"{r['peak_rss_gb']:>11.2f}", flush=True)


if __name__ == "__main__":
  main()

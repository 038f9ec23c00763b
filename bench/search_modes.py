"""Prints, per case and search mode, what inference costs and how far its result is from `exact`
(default model size, random weights, `infer`'s defaults: tiles of 768, halo 16, chunk 1024).

  python -m bench.search_modes [--cases demo,cufed5,720p,4k,12mp] [--modes exact,factored,coarse]
                               [--skip 4k:exact,12mp:exact] [--once CASES] [--versus MODE]
  python -m bench.search_modes --search_only 88x125:92x125 [--modes ...]

Cases are bench.search_memory's. Each (case, mode) runs in its own process, so its peak RSS is
its own; the modes of a case run one after the other, `--versus` (default exact) first, and the
others are compared with its output: argmax agreement over every LR position, and the share of
output values (uint8) off by one grey level and by more. Columns:

* time: the whole inference (reference features and every tile), second call, or first call
  (compilation included) for the cases in `--once`;
* peak RSS of the process after it;
* search: the search alone on the first tile's window against the whole reference (second call;
  first for `--once` cases),
  its multiply-adds (the correlation blocks' products; `exact`: 9C per pair) and GFLOP/s, beside
  the GFLOP/s of a 2048^3 float32 matmul measured in the same process just before;
* Gmadd (image): the whole image's search multiply-adds, counted the same way over all tiles.

`--search_only` times the searches alone, all modes in one process and in turn (so their ratios
share the machine's load), on random features of the given grid sizes.
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

CASES = ("demo", "cufed5", "720p", "4k", "12mp")
MODES = ("exact", "factored", "coarse")


def multiply_adds(mode: str, lr_hw: tuple[int, int], ref_hw: tuple[int, int], channels: int,
                  chunk_size: int) -> int:
  """The search's multiply-adds for an (H, W) grid of LR positions and (h, w) of reference ones,
  as the blocks of `search_transfer` compute them (row blocks carry two rows of context)."""
  from ttsr_jax.models import search_transfer as st

  def factored(query_hw, key_hw):
    (height, width), (key_h, key_w) = query_hw, key_hw
    rows, key_rows = st.block_rows(chunk_size, width, key_w)
    rows, key_rows = min(rows or height, height), min(key_rows or key_h, key_h)
    blocks = -(-height // rows) * -(-key_h // key_rows)
    return blocks * (rows + 2) * (width + 2) * (key_rows + 2) * (key_w + 2) * channels

  (height, width), (key_h, key_w) = lr_hw, ref_hw
  if mode == "exact":
    return height * width * key_h * key_w * 9 * channels
  if mode == "factored":
    return factored(lr_hw, ref_hw)
  half = lambda hw: (-(-hw[0] // 2), -(-hw[1] // 2))
  cells = half(lr_hw)[0] * half(lr_hw)[1]
  side = 2 + 2 * st.COARSE_MARGIN
  refine = cells * st.COARSE_CANDIDATES * 16 * (side + 2) ** 2 * channels
  return factored(half(lr_hw), half(ref_hw)) + refine


def _matmul_gflops(size: int = 2048) -> float:
  import jax
  import jax.numpy as jnp
  a = jnp.ones((size, size), jnp.float32)
  product = jax.jit(lambda a: a @ a)
  product(a).block_until_ready()
  start = time.perf_counter()
  product(a).block_until_ready()
  return 2 * size ** 3 / (time.perf_counter() - start) / 1e9


def run_case(case: str, mode: str, runs: int, save: pathlib.Path) -> dict:
  import jax
  import numpy as np
  from bench import search_memory
  from configs import default
  from data_pipeline import samples
  from ttsr_jax import predict, specs
  from ttsr_jax.models import search_transfer as st
  from ttsr_jax.models.ttsr import TTSR, to_unit_range

  config = default.get_config()
  chunk = config.eval.search_chunk_size
  model = specs.model_spec(config.model).build(search_chunk_size=chunk, search_mode=mode)
  params = search_memory._random_params(model)  # pylint: disable=protected-access
  images = predict.prepare_inputs(*search_memory._images(case))  # pylint: disable=protected-access
  matmul = _matmul_gflops()
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    reference = predict.reference_features(model, params, images["ref"])
    prediction = predict.super_resolve(model, params, images, reference=reference)
    jax.block_until_ready(prediction)
    times.append(time.perf_counter() - start)
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
  np.savez(save, sr=prediction.sr, index=prediction.index)

  # The search alone, on the first tile's window.
  lr_hw = images["lr"].shape[:2]
  tiles = predict.tile_plan(lr_hw, predict.DEFAULT_TILE, predict.DEFAULT_HALO)
  rows, cols = tiles[0]
  window = (slice(predict.SCALE * rows.start, predict.SCALE * (rows.start + rows.length)),
            slice(predict.SCALE * cols.start, predict.SCALE * (cols.start + cols.length)))
  lrsr = samples.normalize(images["lrsr"][window])[None]
  lrsr_lv3 = jax.jit(lambda p, x: model.apply({"params": p}, to_unit_range(x),
                                              method=TTSR.texture_features)[2])(params, lrsr)
  if mode == "exact":
    search = jax.jit(lambda q, k: st.search_keys(q, k, chunk))
  else:
    search = jax.jit(lambda q, k: st.search_features(q, k, mode, chunk))
  for _ in range(runs):
    start = time.perf_counter()
    jax.block_until_ready(search(lrsr_lv3, reference.keys))
    search_s = time.perf_counter() - start
  grid = reference.keys.shape[1:3]
  channels = reference.lv3.shape[-1]
  window_madds = multiply_adds(mode, lrsr_lv3.shape[1:3], grid, channels, chunk)
  image_madds = sum(multiply_adds(mode, (r.length, c.length), grid, channels, chunk)
                    for r, c in tiles)
  return dict(case=case, mode=mode, out=f"{prediction.sr.shape[1]}x{prediction.sr.shape[0]}",
              ref=f"{images['ref'].shape[1]}x{images['ref'].shape[0]}", tiles=len(tiles),
              time_s=times[-1], first_s=times[0], peak_rss_gb=peak, search_s=search_s,
              window_gmadd=window_madds / 1e9, search_gflops=2 * window_madds / search_s / 1e9,
              matmul_gflops=matmul, image_gmadd=image_madds / 1e9)


def search_only(lr_hw: tuple[int, int], ref_hw: tuple[int, int], modes: list[str],
                rounds: int = 2) -> None:
  """Times the search alone (argmax and S) of every mode on random post-ReLU 256-channel
  features, in this process, the modes in turn for `rounds` rounds (the first compiles)."""
  import jax
  from configs import default
  from ttsr_jax.models import search_transfer as st

  chunk = default.get_config().eval.search_chunk_size
  k1, k2 = jax.random.split(jax.random.key(0))
  lr = jax.nn.relu(jax.random.normal(k1, (1, *lr_hw, 256)))
  ref = jax.nn.relu(jax.random.normal(k2, (1, *ref_hw, 256)))
  keys = {"exact": jax.jit(st.reference_keys)(ref)}
  functions = {m: jax.jit(lambda q, k, m=m: st.search_keys(q, k, chunk) if m == "exact"
                          else st.search_features(q, k, m, chunk)) for m in modes}
  print(f"LR grid {lr_hw}, reference grid {ref_hw}, chunk {chunk}; matmul "
        f"{_matmul_gflops():.1f} GFLOP/s")
  for round_ in range(rounds):
    for mode in modes:
      start = time.perf_counter()
      jax.block_until_ready(functions[mode](lr, keys.get(mode, ref)))
      seconds = time.perf_counter() - start
      madds = multiply_adds(mode, lr_hw, ref_hw, 256, chunk)
      print(f"round {round_}  {mode:8} {seconds:8.2f} s  {madds / 1e9:8.1f} Gmadd  "
            f"{2 * madds / seconds / 1e9:7.1f} GFLOP/s", flush=True)


def compare(result: pathlib.Path, versus: pathlib.Path) -> tuple[float, float, float]:
  """(argmax agreement %, % of output values off by 1, % off by more than 1)."""
  import numpy as np
  a, b = np.load(result), np.load(versus)
  diff = np.abs(a["sr"].astype(np.int64) - b["sr"])
  return (100 * np.mean(a["index"] == b["index"]), 100 * np.mean(diff == 1),
          100 * np.mean(diff > 1))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--cases", default=",".join(CASES))
  parser.add_argument("--modes", default=",".join(MODES))
  parser.add_argument("--skip", default="", help="case:mode pairs not to run, e.g. 12mp:exact")
  parser.add_argument("--once", default="4k,12mp", help="cases timed by their first call only")
  parser.add_argument("--versus", default="exact", help="the mode the others are compared with")
  parser.add_argument("--only", nargs=3, help=argparse.SUPPRESS)  # case mode save-path
  parser.add_argument("--search_only", metavar="HxW:HxW",
                      help="only time the searches, in this process, on LR and reference grids "
                      "of these sizes (lv3 positions)")
  args = parser.parse_args()
  if args.search_only:
    lr_hw, ref_hw = (tuple(int(n) for n in side.split("x")) for side in
                     args.search_only.split(":"))
    search_only(lr_hw, ref_hw, args.modes.split(","))
    return
  if args.only:
    case, mode, save = args.only
    print(json.dumps(run_case(case, mode, 1 if case in args.once.split(",") else 2,
                              pathlib.Path(save))))
    return
  skip = set(args.skip.split(","))
  print(f"{'case':6} {'mode':8} {'output':>9} {'reference':>9} {'tiles':>5} {'time s':>7} "
        f"{'first s':>7} {'RSS GB':>6} {'search s':>8} {'Gmadd':>7} {'GFLOP/s':>7} "
        f"{'matmul':>6} {'Gmadd (image)':>13} {'argmax %':>8} {'off 1 %':>8} {'off >1 %':>8}")
  modes = args.modes.split(",")
  modes = [args.versus] * (args.versus in modes) + [m for m in modes if m != args.versus]
  with tempfile.TemporaryDirectory() as tmp:
    for case in args.cases.split(","):
      for mode in modes:
        if f"{case}:{mode}" in skip:
          continue
        save = pathlib.Path(tmp) / f"{case}_{mode}.npz"
        command = [sys.executable, "-m", "bench.search_modes", "--once", args.once,
                   "--only", case, mode, str(save)]
        out = subprocess.run(command, capture_output=True, text=True,
                             env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        if out.returncode:
          print(f"{case:6} {mode:8} failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}",
                flush=True)
          continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        versus = pathlib.Path(tmp) / f"{case}_{args.versus}.npz"
        agreement = ("", "", "")
        if mode != args.versus and versus.exists():
          agreement = tuple(f"{x:.4f}" for x in compare(save, versus))
        first = f"{r['first_s']:7.1f}" if case not in args.once.split(",") else "      -"
        print(f"{case:6} {mode:8} {r['out']:>9} {r['ref']:>9} {r['tiles']:>5} "
              f"{r['time_s']:7.1f} {first} {r['peak_rss_gb']:6.2f} {r['search_s']:8.2f} "
              f"{r['window_gmadd']:7.0f} {r['search_gflops']:7.1f} {r['matmul_gflops']:6.1f} "
              f"{r['image_gmadd']:13.0f} {agreement[0]:>8} {agreement[1]:>8} {agreement[2]:>8}",
              flush=True)


if __name__ == "__main__":
  main()

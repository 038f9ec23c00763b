"""Prints, per case and search mode, what inference costs and how far its result is from `exact`
(default model size, random weights, `infer`'s defaults: tiles of 768, halo 16, chunk 1024).

  python -m bench.search_modes [--cases demo,cufed5,720p,4k,12mp] [--modes exact,factored,coarse]
                               [--skip 4k:exact,12mp:exact] [--once CASES] [--versus MODE]
  python -m bench.search_modes --search_only 88x125:92x125 [--modes ...] [--tile_sides 20,45]
  python -m bench.search_modes --ties 720p

Cases are bench.search_memory's. Each (case, mode) runs in its own process, so its peak RSS is
its own; the modes of a case run one after the other, `--versus` (default exact) first, and the
others are compared with its output: argmax agreement over every LR position, and the share of
output values (uint8) off by one grey level and by more. Columns:

* time: the whole inference (reference features and every tile), second call, or first call
  (compilation included) for the cases in `--once`;
* RSS GB: the process's peak resident set during the inference, sampled from /proc/self/statm;
  "ref held" what it holds once the reference's features are made, "ref peak" its peak while they
  are made, "tile peak" while the tiles run; then the reference feature arrays' sizes;
* search: the search alone on the first tile's window against the whole reference (second call;
  first for `--once` cases),
  its multiply-adds (the correlation blocks' products; `exact`: 9C per pair) and GFLOP/s, beside
  the GFLOP/s of a 2048^3 float32 matmul measured in the same process just before;
* Gmadd (image): the whole image's search multiply-adds, counted the same way over all tiles.

`--search_only` times the searches alone, all modes in one process and in turn (so their ratios
share the machine's load), on random features of the given grid sizes; `--tile_sides 20,45`
adds `factored`'s argmax with tiles of those sides.

`--ties CASE` asks which search is right where `exact` and `factored` pick different patches,
on the first tile's window of CASE with random weights: at those positions it scores every
reference patch in float64 and prints how often each mode's pick is the float64 best and how far
(in float64) the two picks' scores are apart, beside twice float32's rounding bound of a score
(the gap within which either search may flip).

`--tile_memory CASE` prints, per mode, XLA's memory analysis of the first tile's program of CASE
(compiled, not run): the reference's arrays it takes as arguments and the temporaries it
allocates besides them (what a tile adds to the held reference features; not RSS).
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

CASES = ("demo", "cufed5", "720p", "4k", "12mp")
MODES = ("exact", "factored", "coarse")


def factored_multiply_adds(lr_hw: tuple[int, int], ref_hw: tuple[int, int], channels: int,
                           side: int) -> int:
  """The `factored` search's multiply-adds with tiles of at most `side` positions a side, each
  with one position of context around."""
  from ttsr_jax.models import search_transfer as st
  (rows, row_len), (cols, col_len) = (st.tile_layout(n, side) for n in lr_hw)
  (key_rows, key_row_len), (key_cols, key_col_len) = (st.tile_layout(n, side) for n in ref_hw)
  return (rows * cols * (row_len + 2) * (col_len + 2) * key_rows * key_cols
          * (key_row_len + 2) * (key_col_len + 2) * channels)


def multiply_adds(mode: str, lr_hw: tuple[int, int], ref_hw: tuple[int, int], channels: int,
                  chunk_size: int) -> int:
  """The search's multiply-adds for an (H, W) grid of LR positions and (h, w) of reference ones,
  as the tiles of `search_transfer` compute them."""
  from ttsr_jax.models import search_transfer as st

  def factored(query_hw, key_hw):
    side = st.tile_side(chunk_size, key_hw[0] * key_hw[1])
    return factored_multiply_adds(query_hw, key_hw, channels, side)

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


class RssPeak:
  """The peak resident set size of this process while the block runs, sampled from
  /proc/self/statm every `interval_s` (what the kernel holds, unlike XLA's memory analysis)."""

  def __init__(self, interval_s: float = 0.01):
    self._interval, self.peak_gb = interval_s, rss_gb()

  def _sample(self):
    while not self._done.wait(self._interval):
      self.peak_gb = max(self.peak_gb, rss_gb())

  def __enter__(self):
    self._done = threading.Event()
    self._thread = threading.Thread(target=self._sample, daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._done.set()
    self._thread.join()
    self.peak_gb = max(self.peak_gb, rss_gb())


def rss_gb() -> float:
  """This process's resident set size now, from /proc/self/statm."""
  resident_pages = int(pathlib.Path("/proc/self/statm").read_text().split()[1])
  return resident_pages * os.sysconf("SC_PAGE_SIZE") / 1e9


def _first_window_lv3(model, params, images):
  """The LTE lv3 features of the first tile's window of `predict.prepare_inputs` images, and the
  tile plan."""
  import jax
  from data_pipeline import samples
  from ttsr_jax import predict
  from ttsr_jax.models.ttsr import TTSR, to_unit_range

  tiles = predict.tile_plan(images["lr"].shape[:2], predict.DEFAULT_TILE, predict.DEFAULT_HALO)
  rows, cols = tiles[0]
  window = (slice(predict.SCALE * rows.start, predict.SCALE * (rows.start + rows.length)),
            slice(predict.SCALE * cols.start, predict.SCALE * (cols.start + cols.length)))
  lrsr = samples.normalize(images["lrsr"][window])[None]
  lv3 = jax.jit(lambda p, x: model.apply({"params": p}, to_unit_range(x),
                                         method=TTSR.texture_features)[2])(params, lrsr)
  return lv3, tiles


def run_case(case: str, mode: str, runs: int, save: pathlib.Path) -> dict:
  import jax
  import numpy as np
  from bench import search_memory
  from configs import default
  from ttsr_jax import predict, specs
  from ttsr_jax.models import search_transfer as st

  config = default.get_config()
  chunk = config.eval.search_chunk_size
  model = specs.model_spec(config.model).build(search_chunk_size=chunk, search_mode=mode)
  params = search_memory._random_params(model)  # pylint: disable=protected-access
  images = predict.prepare_inputs(*search_memory._images(case))  # pylint: disable=protected-access
  matmul = _matmul_gflops()
  times, peaks = [], []
  for _ in range(runs):
    start = time.perf_counter()
    with RssPeak() as reference_peak:
      reference = jax.block_until_ready(predict.reference_features(model, params, images["ref"]))
    reference_held = rss_gb()
    with RssPeak() as tiles_peak:
      prediction = predict.super_resolve(model, params, images, reference=reference)
    times.append(time.perf_counter() - start)
    peaks.append((reference_peak.peak_gb, tiles_peak.peak_gb))
  reference_peak_gb, tiles_peak_gb = (max(p) for p in zip(*peaks))
  np.savez(save, sr=prediction.sr, index=prediction.index)

  lrsr_lv3, tiles = _first_window_lv3(model, params, images)
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
  reference_gb = {name: x.nbytes / 1e9 for name, x in reference._asdict().items()}
  return dict(case=case, mode=mode, out=f"{prediction.sr.shape[1]}x{prediction.sr.shape[0]}",
              ref=f"{images['ref'].shape[1]}x{images['ref'].shape[0]}", tiles=len(tiles),
              time_s=times[-1], first_s=times[0],
              peak_rss_gb=max(reference_peak_gb, tiles_peak_gb),
              reference_peak_gb=reference_peak_gb, reference_held_gb=reference_held,
              tiles_peak_gb=tiles_peak_gb, reference_arrays_gb=reference_gb,
              search_s=search_s, window_gmadd=window_madds / 1e9,
              search_gflops=2 * window_madds / search_s / 1e9, matmul_gflops=matmul,
              image_gmadd=image_madds / 1e9, load=os.getloadavg())


def search_only(lr_hw: tuple[int, int], ref_hw: tuple[int, int], modes: list[str],
                tile_sides: list[int], rounds: int = 2) -> None:
  """Times the search alone (argmax and S) of every mode on random post-ReLU 256-channel
  features, in this process, the modes in turn for `rounds` rounds (the first compiles); then
  `factored`'s argmax with each of `tile_sides` (any side, beyond FACTORED_TILE_SIDE too)."""
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
  madds = {m: multiply_adds(m, lr_hw, ref_hw, 256, chunk) for m in modes}
  for side in tile_sides:
    name = f"tiles {side}"
    functions[name] = jax.jit(lambda q, k, side=side: st._factored_top(q, k, 1, side))
    madds[name] = factored_multiply_adds(lr_hw, ref_hw, 256, side)
  print(f"LR grid {lr_hw}, reference grid {ref_hw}, chunk {chunk} (factored's tiles "
        f"{st.tile_side(chunk, ref_hw[0] * ref_hw[1])}); matmul {_matmul_gflops():.1f} GFLOP/s")
  for round_ in range(rounds):
    for name, function in functions.items():
      start = time.perf_counter()
      jax.block_until_ready(function(lr, keys.get(name, ref)))
      seconds = time.perf_counter() - start
      print(f"round {round_}  {name:8} {seconds:8.2f} s  {madds[name] / 1e9:8.1f} Gmadd  "
            f"{2 * madds[name] / seconds / 1e9:7.1f} GFLOP/s", flush=True)


def compare(result: pathlib.Path, versus: pathlib.Path) -> tuple[float, float, float]:
  """(argmax agreement %, % of output values off by 1, % off by more than 1)."""
  import numpy as np
  a, b = np.load(result), np.load(versus)
  diff = np.abs(a["sr"].astype(np.int64) - b["sr"])
  return (100 * np.mean(a["index"] == b["index"]), 100 * np.mean(diff == 1),
          100 * np.mean(diff > 1))


def ties(case: str) -> None:
  import jax
  import numpy as np
  from bench import search_memory
  from configs import default
  from ttsr_jax import predict, specs
  from ttsr_jax.models import search_transfer as st

  chunk = default.get_config().eval.search_chunk_size
  model = specs.model_spec(default.get_config().model).build(search_mode="factored")
  params = search_memory._random_params(model)  # pylint: disable=protected-access
  images = predict.prepare_inputs(*search_memory._images(case))  # pylint: disable=protected-access
  refsr_lv3 = predict.reference_features(model, params, images["ref"]).keys
  lrsr_lv3, _ = _first_window_lv3(model, params, images)
  keys = jax.jit(st.reference_keys, static_argnums=1)(refsr_lv3, 8)
  exact = np.asarray(jax.jit(lambda q, k: st.search_keys(q, k, chunk)[1])(lrsr_lv3, keys)[0])
  factored = np.asarray(jax.jit(lambda q, k: st.search_features(q, k, "factored", chunk)[1])(
      lrsr_lv3, refsr_lv3)[0])
  unit = lambda v: v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
  query = unit(np.asarray(st.unfold3x3(lrsr_lv3)[0], np.float64))
  differ = np.nonzero(factored != exact)[0]
  key_patches = np.asarray(st.unfold3x3(refsr_lv3)[0])
  # In blocks of reference positions: all of them in float64 would be 8 x 9C bytes each.
  scores = np.concatenate([query[differ] @ unit(block.astype(np.float64)).T
                           for block in np.array_split(key_patches, -(-len(key_patches) // 8192))],
                          axis=-1)
  channels = lrsr_lv3.shape[-1]
  bound = (9 * channels + 8) * 2.0 ** -24  # float32 rounding of one score (tests derive it)
  print(f"{case}: {query.shape[0]} LR positions of the first window, {key_patches.shape[0]} "
        f"reference positions; float32 rounding bound of a score {bound:.2e}")
  best = scores.argmax(-1)
  gap = np.abs(scores[np.arange(len(differ)), factored[differ]]
               - scores[np.arange(len(differ)), exact[differ]])
  print(f"factored differs from exact at {len(differ)} positions "
        f"({100 * len(differ) / len(query):.3f} %); there the float64 best is exact's pick at "
        f"{np.sum(best == exact[differ])}, factored's at {np.sum(best == factored[differ])}, "
        f"neither at {np.sum((best != exact[differ]) & (best != factored[differ]))}; the two "
        f"picks' float64 scores differ by median {np.median(gap) if len(gap) else 0:.2e}, max "
        f"{gap.max() if len(gap) else 0:.2e}, within twice the bound at {np.sum(gap <= 2 * bound)}")


def tile_memory(case: str, modes: list[str]) -> None:
  import jax
  import jax.numpy as jnp
  from bench import search_memory
  from configs import default
  from ttsr_jax import predict, specs, step

  config = default.get_config()
  lr, ref = search_memory._images(case)  # pylint: disable=protected-access
  lr_hw = lr.shape[:2]
  rows, cols = predict.tile_plan(lr_hw, predict.DEFAULT_TILE, predict.DEFAULT_HALO)[0]
  grid = (ref.shape[0] // predict.SCALE, ref.shape[1] // predict.SCALE)
  abstract = lambda *shape: jax.ShapeDtypeStruct((1, *shape), jnp.float32)
  for mode in modes:
    model = specs.model_spec(config.model).build(
        search_chunk_size=config.eval.search_chunk_size, search_mode=mode)
    params = jax.eval_shape(model.init, jax.random.key(0), *step.example_inputs())["params"]
    reference = jax.eval_shape(
        lambda p, r, rs: model.apply({"params": p}, r, rs, method=type(model).reference_features),
        params, abstract(*ref.shape[:2], 3), abstract(*ref.shape[:2], 3))
    window = abstract(rows.length, cols.length, 3)
    window4 = abstract(predict.SCALE * rows.length, predict.SCALE * cols.length, 3)
    compiled = predict.tile_function(model).lower(params, window, window4, reference).compile()
    analysis = compiled.memory_analysis()
    held = sum(x.size * 4 for x in reference) / 1e9
    print(f"{case} {mode:8} reference grid {grid}, tile window {rows.length}x{cols.length} LR: "
          f"reference arrays {held:.2f} GB, arguments {analysis.argument_size_in_bytes / 1e9:.2f} "
          f"GB, temporaries {analysis.temp_size_in_bytes / 1e9:.2f} GB, outputs "
          f"{analysis.output_size_in_bytes / 1e9:.2f} GB", flush=True)


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
  parser.add_argument("--tile_sides", default="", metavar="S,S,...",
                      help="with --search_only: also time factored's argmax with tiles of these "
                      "sides")
  parser.add_argument("--tile_memory", metavar="CASE",
                      help="only print XLA's memory analysis of CASE's tile program per mode")
  parser.add_argument("--ties", metavar="CASE",
                      help="only compare the modes' picks with float64 scores on CASE")
  args = parser.parse_args()
  if args.tile_memory:
    tile_memory(args.tile_memory, args.modes.split(","))
    return
  if args.ties:
    ties(args.ties)
    return
  if args.search_only:
    lr_hw, ref_hw = (tuple(int(n) for n in side.split("x")) for side in
                     args.search_only.split(":"))
    search_only(lr_hw, ref_hw, args.modes.split(","),
                [int(side) for side in args.tile_sides.split(",") if side])
    return
  if args.only:
    case, mode, save = args.only
    print(json.dumps(run_case(case, mode, 1 if case in args.once.split(",") else 2,
                              pathlib.Path(save))))
    return
  skip = set(args.skip.split(","))
  print(f"{'case':6} {'mode':8} {'output':>9} {'reference':>9} {'tiles':>5} {'time s':>7} "
        f"{'first s':>7} {'RSS GB':>6} {'search s':>8} {'Gmadd':>7} {'GFLOP/s':>7} "
        f"{'matmul':>6} {'Gmadd (image)':>13} {'argmax %':>8} {'off 1 %':>8} {'off >1 %':>8} "
        f"{'ref held':>8} {'ref peak':>8} {'tile peak':>9} {'load 1/5 min':>12}")
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
              f"{r['image_gmadd']:13.0f} {agreement[0]:>8} {agreement[1]:>8} {agreement[2]:>8} "
              f"{r['reference_held_gb']:8.2f} {r['reference_peak_gb']:8.2f} "
              f"{r['tiles_peak_gb']:9.2f} {r['load'][0]:6.1f} {r['load'][1]:5.1f}", flush=True)
        arrays = ", ".join(f"{k} {v:.2f}" for k, v in r["reference_arrays_gb"].items())
        print(f"{'':15} reference arrays (GB): {arrays}", flush=True)


if __name__ == "__main__":
  main()

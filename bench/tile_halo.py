"""How far tiled outputs are from the whole-image output, per halo (the default model size).

  python -m bench.tile_halo [--checkpoint PATH] [--halos 0,8,16,24] [--tile 256]

Runs the demo pair (assets/demo; or --lr/--ref) once whole and once in tiles of `--tile` output
pixels per side for each halo, and prints, per halo, the share of output pixel values that
differ by more than one grey level, the share that differ at all, the largest difference, and
whether the search picked another reference patch anywhere. Without --checkpoint the weights are
random (bench.search_memory's). The exact halo (`tiling.exact_halo`) gives no difference.
"""

import argparse
import pathlib

import numpy as np

from bench import search_memory
from data_pipeline import files
from ttsr_jax import generators
from ttsr_jax import predict
from ttsr_jax import specs
from ttsr_jax import tiling
from configs import default


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", type=pathlib.Path, help="default: random weights")
  parser.add_argument("--lr", type=pathlib.Path, default=search_memory.DEMO / "lr" / "0.png")
  parser.add_argument("--ref", type=pathlib.Path, default=search_memory.DEMO / "ref" / "0.png")
  parser.add_argument("--halos", default="0,8,16,24")
  parser.add_argument("--tile", type=int, default=256)
  args = parser.parse_args()
  if args.checkpoint:
    params, spec = generators.load(args.checkpoint)
    model = spec.build(search_chunk_size=1024)
  else:
    spec = specs.model_spec(default.get_config().model)
    model = spec.build(search_chunk_size=1024)
    params = search_memory._random_params(model)  # pylint: disable=protected-access
  images = predict.prepare_inputs(files.read_rgb(args.lr), files.read_rgb(args.ref))
  reference = predict.reference_features(model, params, images["ref"])
  whole = predict.super_resolve(model, params, images, reference=reference, tile=0)
  exact = tiling.exact_halo(spec.num_res_blocks, spec.lte_reduce_lv3)
  print(f"LR {images['lr'].shape[0]}x{images['lr'].shape[1]}, tile {args.tile}, exact halo "
        f"{exact}; {'checkpoint ' + str(args.checkpoint) if args.checkpoint else 'random weights'}")
  print(f"{'halo':>4} {'tiles':>5} {'>1 grey level %':>16} {'differ %':>9} {'max diff':>8} "
        f"{'index differs %':>15}")
  for halo in (int(h) for h in args.halos.split(",")):
    tiled = predict.super_resolve(model, params, images, reference=reference, tile=args.tile,
                                  halo=halo)
    diff = np.abs(tiled.sr.astype(np.int64) - whole.sr)
    tiles = len(predict.tile_plan(images["lr"].shape[:2], args.tile, halo))
    print(f"{halo:>4} {tiles:>5} {100 * np.mean(diff > 1):>16.4f} {100 * np.mean(diff > 0):>9.4f} "
          f"{diff.max():>8} {100 * np.mean(tiled.index != whole.index):>15.4f}", flush=True)


if __name__ == "__main__":
  main()

r"""Prints what JAX's persistent compilation cache saves when evaluating one's own photos.

  python -m bench.eval_compile_cache [--checkpoint PATH] [--work DIR]   (from the checkout)
  python -m bench.eval_compile_cache --photos_only --work DIR

Makes a folder of 32 photos of varied sizes (`write_photos`: the 2 x 2 tiles of eight skimage
photos, each tile rescaled to its own size, one group per photo), turns it into a CUFED-layout
dataset with `make_pairs` (32 test groups) and evaluates it with `python -m
ttsr_jax.eval_checkpoint` three times, each in a new process: with the cache off, with an empty
cache, and again with that cache filled. Prints the wall time and the CPU time of each (the CPU
time hardly depends on other jobs sharing the cores), the number of distinct (LR, reference)
input sizes and whether the three gave the same numbers. Without --checkpoint the
model is configs/demo.py's, randomly initialised: compilation does not depend on the weights.
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

import numpy as np
from PIL import Image

from data_pipeline import make_demo
from ttsr_jax import make_pairs
from data_pipeline import samples

NUM_SOURCES = 8  # skimage photos, each cut into 2 x 2 tiles


def write_photos(out: pathlib.Path, seed: int = 0) -> list[pathlib.Path]:
  """32 JPEG photos under `out`: the four 2 x 2 tiles of each of eight skimage photos (no two
  share a pixel), each rescaled (bicubic) to a shorter side drawn from 240..360 (make_pairs
  needs 229 on the longer side for its 160 x 160 patches), in a folder per source photo (a
  make_pairs group)."""
  rng = np.random.default_rng(seed)
  written = []
  for name, pixels in list(make_demo.load_photos().items())[:NUM_SOURCES]:
    height, width = pixels.shape[:2]
    for row in range(2):
      for col in range(2):
        tile = pixels[row * height // 2:(row + 1) * height // 2,
                      col * width // 2:(col + 1) * width // 2]
        short = int(rng.integers(240, 361))
        scale = short / min(tile.shape[:2])
        tile = samples.resize_bicubic(tile, round(tile.shape[0] * scale),
                                      round(tile.shape[1] * scale))
        path = out / name / f"{name}_{row}{col}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(tile).save(path, quality=92)
        written.append(path)
  return written


def _random_demo_checkpoint(path: pathlib.Path) -> pathlib.Path:
  # Imported here: --photos_only needs no JAX.
  import jax  # pylint: disable=import-outside-toplevel
  from configs import demo  # pylint: disable=import-outside-toplevel
  from ttsr_jax import convert, specs, step  # pylint: disable=import-outside-toplevel
  model = specs.model_spec(demo.get_config().model).build()
  params = model.init(jax.random.key(0), *step.example_inputs())["params"]
  np.savez(path, **convert.export_state_dict(params))
  return path


def _evaluate(checkpoint: pathlib.Path, cufed_dir: pathlib.Path, out: pathlib.Path,
              cache: str | None, num_images: int) -> tuple[float, float]:
  """(wall seconds, CPU seconds of the child process) of one eval_checkpoint run."""
  env = dict(os.environ)
  if cache is None:
    env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
  else:
    env["JAX_COMPILATION_CACHE_DIR"] = cache
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  start = time.perf_counter()
  subprocess.run([sys.executable, "-m", "ttsr_jax.eval_checkpoint", "--checkpoint",
                  str(checkpoint), "--cufed_dir", str(cufed_dir), "--out", str(out),
                  "--num_images", str(num_images)],
                 env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  wall = time.perf_counter() - start
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def _distinct_sizes(cufed_dir: pathlib.Path, num_images: int) -> int:
  from data_pipeline import cufed5  # pylint: disable=import-outside-toplevel
  batches = list(cufed5.level_samples(cufed_dir, 1))[:num_images or None]
  return len({(batch["lr"].shape, batch["ref"].shape) for _, batch in batches})


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--checkpoint", type=pathlib.Path, default=None,
                      help="the model to evaluate (default: random configs/demo.py weights)")
  parser.add_argument("--work", type=pathlib.Path, default=None,
                      help="directory for the photos, the dataset and the cache "
                      "(default: a temporary one)")
  parser.add_argument("--photos_only", action="store_true",
                      help="write the photos and the dataset only")
  parser.add_argument("--num_images", type=int, default=0,
                      help="evaluate the first N test images only (0: all 32)")
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as temporary:
    work = args.work or pathlib.Path(temporary)
    photos, cufed_dir = work / "photos", work / "data"
    if not photos.exists():
      write_photos(photos)
    if make_pairs.main(["--photos", str(photos), "--out", str(cufed_dir)]):
      sys.exit(1)
    if args.photos_only:
      return
    checkpoint = args.checkpoint or _random_demo_checkpoint(work / "demo_random.npz")
    cache = work / "xla_cache"
    if cache.exists():
      sys.exit(f"{cache} exists; the cold run needs an empty cache")
    print(f"{_distinct_sizes(cufed_dir, args.num_images)} distinct (LR, reference) input sizes "
          f"in {args.num_images or 32} test images", flush=True)
    runs = {"cache off": None, "empty cache": str(cache), "filled cache": str(cache)}
    records = {}
    for name, directory in runs.items():
      out = work / f"results_{name.replace(' ', '_')}.json"
      wall, cpu = _evaluate(checkpoint, cufed_dir, out, directory, args.num_images)
      records[name] = json.loads(out.read_text())
      print(f"{name}: {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)
    scores = [{k: v for k, v in r.items() if k.endswith(("psnr", "ssim"))}
              for r in records.values()]
    print("same numbers in all three runs:", all(s == scores[0] for s in scores))


if __name__ == "__main__":
  main()

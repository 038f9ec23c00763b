r"""Makes a small dataset in CUFED layout from the photos that ship inside scikit-image.

  python -m data_pipeline.make_demo --out DIR [--train_pairs 480] [--patch_size 160] \
      [--test_groups 9] [--test_size 240] [--seed 0] [--tiny]

The rules are those of `data_pipeline.pairs` (the engine of `make_pairs`, for any photo folder):
each photo is its own group except the two views of the stereo motorcycle, an aligned group. So a
training pair is a patch of a photo and a reference cut from a nearby, overlapping window of the
same photo (or of the other view), rescaled by up to 25 % and smaller than the patch. Training
windows come from the first 70 % of each photo's longer side and test images from the last 30 %,
so test pixels are never training inputs. Each test image gets five references of decreasing
similarity:
  1: the same window moved by a quarter of its size (the other stereo view for the motorcycle),
  2: the window moved by half its size and rescaled by 0.8,
  3: a window of the same photo that does not overlap the test image,
  4, 5: windows of two other photos.
DIR must be new or empty, or hold the same command's earlier output (then nothing is rewritten).
Training prepares the TFDS dataset of the patch size its config reads, on first use.
"""

import argparse
import pathlib

import numpy as np
import skimage.data

from data_pipeline import pairs

# Colour photos that load offline (skimage.data fetches some others with pooch, which needs a
# network; those are left out).
_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina",
           "immunohistochemistry")
_TINY = {"train_pairs": 18, "patch_size": 32, "test_groups": 3, "test_size": 48}


def load_photos() -> dict[str, np.ndarray]:
  """The demo's source photos, uint8 RGB, by name (the stereo views as two photos)."""
  photos = {name: getattr(skimage.data, name)() for name in _PHOTOS}
  photos["motorcycle_left"], photos["motorcycle_right"], _ = skimage.data.stereo_motorcycle()
  return photos


def demo_photos() -> list[pairs.Photo]:
  """The demo's photos for `pairs.make_dataset`: each its own group, except the two views of
  the stereo pair, which form the aligned group `motorcycle`."""
  return [pairs.Photo(name, *pixels.shape[:2],
                      group="motorcycle" if name.startswith("motorcycle") else name,
                      load=lambda pixels=pixels: pixels)
          for name, pixels in load_photos().items()]


def make_demo(out: str | pathlib.Path, *, train_pairs: int = 480, patch_size: int = 160,
              test_groups: int = 9, test_size: int = 240, seed: int = 0) -> pathlib.Path:
  """Writes the demo dataset in CUFED layout under `out` (see `pairs.make_dataset`) and returns
  that path."""
  return pairs.make_dataset(out, demo_photos(), train_pairs=train_pairs, patch_size=patch_size,
                            test_groups=test_groups, test_size=test_size, seed=seed,
                            aligned_groups=("motorcycle",))


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True, help="directory to create (CUFED layout)")
  parser.add_argument("--train_pairs", type=int, default=480)
  parser.add_argument("--patch_size", type=int, default=160)
  parser.add_argument("--test_groups", type=int, default=9)
  parser.add_argument("--test_size", type=int, default=240,
                      help="largest side of a test image (a narrow photo gives a narrower one)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--tiny", action="store_true",
                      help="a few 32x32 pairs and 48-pixel test images, for tests "
                           f"(overrides {', '.join(_TINY)})")
  args = parser.parse_args(argv)
  sizes = {key: getattr(args, key) for key in _TINY} | (_TINY if args.tiny else {})
  out = make_demo(args.out, seed=args.seed, **sizes)
  print(f"demo dataset in {out}")


if __name__ == "__main__":
  main()

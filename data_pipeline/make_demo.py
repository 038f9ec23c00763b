r"""Makes a small dataset in CUFED layout from the photos that ship inside scikit-image.

  python -m data_pipeline.make_demo --out DIR [--train_pairs 480] [--patch_size 160] \
      [--test_groups 9] [--test_size 240] [--seed 0] [--tiny] [--no_prepare]

CUFED pairs photos of the same event; here a training pair is a patch of a photo and a reference
cut from a nearby, overlapping window of the same photo (or of the other view of the stereo pair),
rescaled by up to 25 % and smaller than the patch. Training windows come from the first 70 % of
each photo's longer side and test images from the last 30 %, so test pixels are never training
inputs. Each test image gets five references of decreasing similarity:
  1: the same window moved by a quarter of its size (the other stereo view for the motorcycle),
  2: the window moved by half its size and rescaled by 0.8,
  3: a window of the same photo that does not overlap the test image,
  4, 5: windows of two other photos.
Unless --no_prepare, the `cufed` TFDS dataset is then prepared in DIR/tfds.
"""

import argparse
import pathlib

import numpy as np
import skimage.data
from PIL import Image

from data_pipeline import samples

# Colour photos that load offline (skimage.data fetches some others with pooch, which needs a
# network; those are left out).
_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina",
           "immunohistochemistry")
_TRAIN_FRACTION = 0.7
_TINY = {"train_pairs": 18, "patch_size": 32, "test_groups": 3, "test_size": 48}


def load_photos() -> dict[str, np.ndarray]:
  """The demo's source photos, uint8 RGB, by name (the stereo views as two photos)."""
  photos = {name: getattr(skimage.data, name)() for name in _PHOTOS}
  photos["motorcycle_left"], photos["motorcycle_right"], _ = skimage.data.stereo_motorcycle()
  return photos


_PARTNER = {"motorcycle_left": "motorcycle_right", "motorcycle_right": "motorcycle_left"}


class _Photo:
  """A photo split along its longer side into a training band and a test band."""

  def __init__(self, name: str, pixels: np.ndarray):
    self.name, self.pixels = name, pixels
    height, width = pixels.shape[:2]
    self.axis = 1 if width >= height else 0
    self.split = int(pixels.shape[self.axis] * _TRAIN_FRACTION)

  def band(self, train: bool) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the training or test band."""
    height, width = self.pixels.shape[:2]
    box = [0, 0, height, width]
    box[self.axis + (2 if train else 0)] = self.split
    return tuple(box)

  def window(self, rng: np.random.Generator, height: int, width: int,
             train: bool) -> tuple[int, int]:
    """A random (top, left) for a height x width window (clipped to the band) inside a band."""
    top, left, bottom, right = self.band(train)
    height, width = min(height, bottom - top), min(width, right - left)
    return int(rng.integers(top, bottom - height + 1)), int(rng.integers(left, right - width + 1))

  def fits(self, height: int, width: int, train: bool) -> bool:
    top, left, bottom, right = self.band(train)
    return bottom - top >= height and right - left >= width

  def cut(self, top: int, left: int, height: int, width: int, scale: float = 1.0,
          train: bool = True) -> np.ndarray:
    """A window of about (height / scale, width / scale) around (top, left), resized to
    (height, width) and kept inside the band."""
    band_top, band_left, band_bottom, band_right = self.band(train)
    source_h = min(max(round(height / scale), 1), band_bottom - band_top)
    source_w = min(max(round(width / scale), 1), band_right - band_left)
    top = int(np.clip(top, band_top, band_bottom - source_h))
    left = int(np.clip(left, band_left, band_right - source_w))
    window = self.pixels[top:top + source_h, left:left + source_w]
    if window.shape[:2] == (height, width):
      return window
    return samples.resize_bicubic(np.ascontiguousarray(window), height, width)


def _save(image: np.ndarray, path: pathlib.Path) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(image).save(path)


def make_train(out: pathlib.Path, photos: dict[str, _Photo], pairs: int, patch_size: int,
               rng: np.random.Generator) -> None:
  """Writes `pairs` training pairs to out/train/input and out/train/ref."""
  usable = [p for p in photos.values() if p.fits(patch_size, patch_size, train=True)]
  if not usable:
    raise ValueError(f"patch_size {patch_size}: no demo photo has a training band that large")
  for i in range(pairs):
    photo = usable[i % len(usable)]
    top, left = photo.window(rng, patch_size, patch_size, train=True)
    ref_h, ref_w = rng.integers(patch_size * 5 // 8, patch_size + 1, size=2)
    shift = rng.integers(-patch_size // 2, patch_size // 2 + 1, size=2)
    ref_photo = photos[_PARTNER.get(photo.name, photo.name)]
    ref = ref_photo.cut(top + shift[0], left + shift[1], int(ref_h), int(ref_w),
                        scale=float(rng.uniform(0.75, 1.25)))
    _save(photo.pixels[top:top + patch_size, left:left + patch_size],
          out / "train" / "input" / f"{i:06d}.png")
    _save(ref, out / "train" / "ref" / f"{i:06d}.png")


def make_test(out: pathlib.Path, photos: dict[str, _Photo], groups: int, size: int,
              rng: np.random.Generator) -> None:
  """Writes `groups` CUFED5-style groups (XXX_0.png and five references) to out/test/CUFED5."""
  names = list(photos)
  for g in range(groups):
    photo = photos[names[g % len(names)]]
    top, left, bottom, right = photo.band(train=False)
    height, width = min(size, bottom - top), min(size, right - left)
    top, left = photo.window(rng, height, width, train=False)
    others = [photos[n] for n in names if n != photo.name and n != _PARTNER.get(photo.name)]
    stranger, far_stranger = (others[i] for i in rng.choice(len(others), 2, replace=False))
    partner = photos.get(_PARTNER.get(photo.name, ""))
    refs = [
        (partner.pixels[top:top + height, left:left + width] if partner else
         photo.cut(top - height // 4, left - width // 4, height, width, train=False)),
        photo.cut(top - height // 2, left + width // 2, height, width, scale=0.8, train=False),
        photo.cut(*photo.window(rng, height, width, train=True), height, width),
        stranger.cut(*stranger.window(rng, height, width, train=True), height, width),
        far_stranger.cut(*far_stranger.window(rng, height, width, train=True), height, width),
    ]
    directory = out / "test" / "CUFED5"
    _save(photo.pixels[top:top + height, left:left + width], directory / f"{g:03d}_0.png")
    for level, ref in enumerate(refs, start=1):
      _save(ref, directory / f"{g:03d}_{level}.png")


def make_demo(out: str | pathlib.Path, *, train_pairs: int = 480, patch_size: int = 160,
              test_groups: int = 9, test_size: int = 240, seed: int = 0) -> pathlib.Path:
  """Writes the demo dataset in CUFED layout under `out` and returns that path."""
  out = pathlib.Path(out)
  rng = np.random.default_rng(seed)
  photos = {name: _Photo(name, pixels) for name, pixels in load_photos().items()}
  make_train(out, photos, train_pairs, patch_size, rng)
  make_test(out, photos, test_groups, test_size, rng)
  return out


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
  parser.add_argument("--no_prepare", action="store_true", help="skip the TFDS preparation")
  args = parser.parse_args(argv)
  sizes = {key: getattr(args, key) for key in _TINY} | (_TINY if args.tiny else {})
  out = make_demo(args.out, seed=args.seed, **sizes)
  if not args.no_prepare:
    from data_pipeline import cufed  # pylint: disable=import-outside-toplevel  # imports TF
    cufed.prepare(out, patch_size=sizes["patch_size"])
  print(f"demo dataset in {out}" + ("" if args.no_prepare else f", prepared in {out / 'tfds'}"))


if __name__ == "__main__":
  main()

"""Builds a CUFED-layout dataset (training pairs and CUFED5-style test groups) from photos.

CUFED pairs photos of the same event. Here each photo is split along its longer side: training
windows come from the first part (1 - test_fraction of the side) and test images from the rest,
so no test pixel is ever a training input. Photos belong to groups (an event, a folder); a group
can be `aligned` (views of one scene with the same pixel grid, as a stereo pair).

Training pair k of a photo: a patch x patch window of its training band, and a reference 5/8 to 1
times the patch on each side, seen at a scale of 0.75 to 1.25, cut from the photo's reference
sources in turn:
  * an aligned group: the other views, at the window shifted by up to half a patch;
  * otherwise: the photo itself (the window shifted by up to half a patch), then each other photo
    of its group, then (when given) the most similar photo outside its group; other photos give
    a random window of their training band.
Test group: a window of a photo's test band (sides up to test_size) and five references of
decreasing similarity:
  1: the same window moved by a quarter of its size (for an aligned group: the other view's
     same window),
  2: the window moved by half its size and seen 0.8 times smaller,
  3: a window of the photo's training band (no overlap with the test image),
  4: a window of another photo of its group (not aligned), else of the most similar photo
     outside the group (when given), else of a random photo outside the group,
  5: a window of a random photo outside the group.
References 3 to 5 come from training bands. Every draw comes from one NumPy generator seeded with
`seed` and depends only on the photos' order, sizes and groups (and the similar photos given), so
the same seed gives the same files. All windows are drawn first; then each photo is read once and
its windows cut, so a collection need not fit in memory.
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
from PIL import ExifTags, Image, ImageOps

from data_pipeline import files
from data_pipeline import samples

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
DEFAULT_TEST_FRACTION = 0.3

# progress(items, description) yields the items, showing how far it got.
Progress = Callable[[Sequence, str], Iterable]


def no_progress(items: Sequence, description: str) -> Iterable:  # pylint: disable=unused-argument
  return items


@dataclasses.dataclass(frozen=True)
class Photo:
  """A photo known by name, size and group; `load()` returns its uint8 RGB pixels on demand."""
  name: str
  height: int
  width: int
  group: str
  load: Callable[[], np.ndarray]


class _Bands:
  """A height x width photo split along its longer side into a training band and a test band."""

  def __init__(self, height: int, width: int, test_fraction: float):
    self.height, self.width = height, width
    self.axis = 1 if width >= height else 0
    self.split = int((height, width)[self.axis] * (1 - test_fraction))

  def band(self, train: bool) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the training or test band."""
    box = [0, 0, self.height, self.width]
    box[self.axis + (2 if train else 0)] = self.split
    return tuple(box)

  def fits(self, height: int, width: int, train: bool) -> bool:
    top, left, bottom, right = self.band(train)
    return bottom - top >= height and right - left >= width

  def window(self, rng: np.random.Generator, height: int, width: int,
             train: bool) -> tuple[int, int]:
    """A random (top, left) for a height x width window (clipped to the band) inside a band."""
    top, left, bottom, right = self.band(train)
    height, width = min(height, bottom - top), min(width, right - left)
    return int(rng.integers(top, bottom - height + 1)), int(rng.integers(left, right - width + 1))

  def source_box(self, top: int, left: int, height: int, width: int, scale: float,
                 train: bool) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the window of about (height / scale, width / scale) around
    (top, left), kept inside the band; it is resized to (height, width) when cut."""
    band_top, band_left, band_bottom, band_right = self.band(train)
    source_h = min(max(round(height / scale), 1), band_bottom - band_top)
    source_w = min(max(round(width / scale), 1), band_right - band_left)
    return (int(np.clip(top, band_top, band_bottom - source_h)),
            int(np.clip(left, band_left, band_right - source_w)), source_h, source_w)


@dataclasses.dataclass(frozen=True)
class _Cut:
  """Output file `path` (relative) is `box` (top, left, height, width) of photo `photo`,
  resized to `size` (height, width)."""
  path: str
  photo: str
  box: tuple[int, int, int, int]
  size: tuple[int, int]


class _Planner:
  """Draws the windows of a dataset (see the module docstring) without touching pixels."""

  def __init__(self, photos: Sequence[Photo], test_fraction: float,
               aligned_groups: frozenset[str], similar: Mapping[str, str] | None):
    self.names = [p.name for p in photos]
    self.bands = {p.name: _Bands(p.height, p.width, test_fraction) for p in photos}
    self.group = {p.name: p.group for p in photos}
    self.aligned_groups, self.similar = aligned_groups, similar or {}
    members: dict[str, list[str]] = {}
    for name in self.names:
      members.setdefault(self.group[name], []).append(name)
    # Each photo's group mates, starting after it, so that a pair of views refer to each other.
    self.mates = {}
    for group in members.values():
      for i, name in enumerate(group):
        self.mates[name] = group[i + 1:] + group[:i]

  def aligned(self, name: str) -> bool:
    return self.group[name] in self.aligned_groups and bool(self.mates[name])

  def cut(self, path: str, photo: str, top: int, left: int, height: int, width: int,
          scale: float = 1.0, train: bool = True) -> _Cut:
    box = self.bands[photo].source_box(top, left, height, width, scale, train)
    return _Cut(path, photo, box, (height, width))

  def reference_sources(self, name: str) -> list[str]:
    if self.aligned(name):
      return self.mates[name]
    return [name, *self.mates[name], *([self.similar[name]] if name in self.similar else [])]

  def train(self, pairs: int, patch_size: int, rng: np.random.Generator) -> list[_Cut]:
    usable = [n for n in self.names if self.bands[n].fits(patch_size, patch_size, train=True)]
    if pairs and not usable:
      raise ValueError(f"patch_size {patch_size}: no photo has a training band that large")
    cuts, digits = [], max(6, len(str(pairs - 1)))
    for i in range(pairs):
      name = usable[i % len(usable)]
      top, left = self.bands[name].window(rng, patch_size, patch_size, train=True)
      ref_h, ref_w = (int(side) for side in rng.integers(patch_size * 5 // 8, patch_size + 1,
                                                         size=2))
      shift = rng.integers(-patch_size // 2, patch_size // 2 + 1, size=2)
      sources = self.reference_sources(name)
      source = sources[(i // len(usable)) % len(sources)]
      scale = float(rng.uniform(0.75, 1.25))
      if source == name or self.aligned(name):
        ref_top, ref_left = top + int(shift[0]), left + int(shift[1])
      else:
        ref_top, ref_left = self.bands[source].window(rng, round(ref_h / scale),
                                                      round(ref_w / scale), train=True)
      cuts.append(self.cut(f"train/input/{i:0{digits}d}.png", name, top, left, patch_size,
                           patch_size))
      cuts.append(self.cut(f"train/ref/{i:0{digits}d}.png", source, ref_top, ref_left, ref_h,
                           ref_w, scale))
    return cuts

  def _random_window(self, path: str, name: str, height: int, width: int,
                     rng: np.random.Generator) -> _Cut:
    return self.cut(path, name, *self.bands[name].window(rng, height, width, train=True),
                    height, width)

  def test(self, groups: int, size: int, rng: np.random.Generator) -> list[_Cut]:
    cuts, count, digits = [], len(self.names), max(3, len(str(groups - 1)))
    for g in range(groups):
      name = self.names[g % count]
      bands = self.bands[name]
      top, left, bottom, right = bands.band(train=False)
      height, width = min(size, bottom - top), min(size, right - left)
      top, left = bands.window(rng, height, width, train=False)
      others = [n for n in self.names if self.group[n] != self.group[name]]
      if len(others) < 2:  # a collection of one group: any other photo, or the photo itself
        others = [n for n in self.names if n != name] or [name]
      stranger, far_stranger = (others[i] for i in rng.choice(len(others), 2,
                                                              replace=len(others) < 2))
      mates = [] if self.aligned(name) else self.mates[name]
      if mates:
        near = mates[int(rng.integers(len(mates)))]
      else:
        near = self.similar.get(name, stranger)
      far = far_stranger if far_stranger != near else stranger
      prefix = f"test/CUFED5/{g:0{digits}d}"
      first = (self.cut(f"{prefix}_1.png", self.mates[name][0], top, left, height, width,
                        train=False) if self.aligned(name) else
               self.cut(f"{prefix}_1.png", name, top - height // 4, left - width // 4, height,
                        width, train=False))
      cuts += [
          self.cut(f"{prefix}_0.png", name, top, left, height, width, train=False),
          first,
          self.cut(f"{prefix}_2.png", name, top - height // 2, left + width // 2, height,
                   width, scale=0.8, train=False),
          self._random_window(f"{prefix}_3.png", name, height, width, rng),
          self._random_window(f"{prefix}_4.png", near, height, width, rng),
          self._random_window(f"{prefix}_5.png", far, height, width, rng),
      ]
    return cuts


def _write_cuts(directory: pathlib.Path, cuts: list[_Cut], photos: Sequence[Photo],
                progress: Progress) -> None:
  by_photo: dict[str, list[_Cut]] = {}
  for cut in cuts:
    by_photo.setdefault(cut.photo, []).append(cut)
  for photo in progress([p for p in photos if p.name in by_photo], "cutting windows"):
    pixels = photo.load()
    if pixels.shape[:2] != (photo.height, photo.width):
      raise files.DatasetError(f"{photo.name}: photo is {pixels.shape[0]}x{pixels.shape[1]} now, "
                               f"expected {photo.height}x{photo.width} as when it was listed")
    for cut in by_photo[photo.name]:
      top, left, height, width = cut.box
      window = pixels[top:top + height, left:left + width]
      if window.shape[:2] != cut.size:
        window = samples.resize_bicubic(np.ascontiguousarray(window), *cut.size)
      path = directory / cut.path
      path.parent.mkdir(parents=True, exist_ok=True)
      Image.fromarray(window).save(path)


# Written last into every dataset: the settings and photos it was made from, so that the same
# command run again finds its work done instead of refusing the directory.
MANIFEST = "dataset.json"


def check_new_directory(out: str | os.PathLike) -> None:
  """Raises FileExistsError unless `out` is a new or empty directory, or a dataset this module
  wrote (`make_dataset` then compares its settings)."""
  out = pathlib.Path(out)
  if out.exists() and (not out.is_dir() or any(out.iterdir())) and not (out / MANIFEST).is_file():
    raise FileExistsError(f"{out}: already exists, expected a new or empty directory")


def make_dataset(out: str | os.PathLike, photos: Sequence[Photo], *, train_pairs: int,
                 patch_size: int, test_groups: int, test_size: int, seed: int = 0,
                 test_fraction: float = DEFAULT_TEST_FRACTION,
                 aligned_groups: Iterable[str] = (), similar: Mapping[str, str] | None = None,
                 progress: Progress = no_progress) -> pathlib.Path:
  """Writes train/input, train/ref and test/CUFED5 under `out` (see the module docstring).

  Args:
    out: a directory that does not exist yet (or is empty); it appears only once complete. If it
      holds a dataset made with the same settings and photos, nothing is written.
    photos: the photos, in the order that pairs and test groups cycle through them.
    train_pairs: training pairs, taken from the photos in turn (those whose training band holds a
      patch_size x patch_size window).
    patch_size: side of a training input.
    test_groups: CUFED5 groups, one per photo in turn.
    test_size: largest side of a test image (a narrow band gives a narrower one).
    seed: seeds every draw.
    test_fraction: part of each photo's longer side held out for test images.
    aligned_groups: groups whose photos are views of one scene on the same pixel grid.
    similar: photo name -> the most similar photo outside its group (an extra reference source).
    progress: wraps the loop over photos.

  Returns:
    `out` as a path.
  """
  out = pathlib.Path(out)
  check_new_directory(out)
  aligned_groups = frozenset(aligned_groups)
  manifest = {"train_pairs": train_pairs, "patch_size": patch_size, "test_groups": test_groups,
              "test_size": test_size, "seed": seed, "test_fraction": test_fraction,
              "aligned_groups": sorted(aligned_groups),
              "similar": dict(sorted((similar or {}).items())),
              "photos": [[p.name, p.height, p.width, p.group] for p in photos]}
  if (out / MANIFEST).is_file():
    if json.loads((out / MANIFEST).read_text()) != manifest:
      raise FileExistsError(f"{out}: holds a dataset made from other photos or settings "
                            f"({out / MANIFEST}); choose a new directory")
    return out
  if not 0 < test_fraction < 1:
    raise ValueError(f"test_fraction {test_fraction}: expected a number between 0 and 1")
  if not photos:
    raise ValueError("no photos: expected at least one")
  rng = np.random.default_rng(seed)
  planner = _Planner(photos, test_fraction, aligned_groups, similar)
  cuts = planner.train(train_pairs, patch_size, rng) + planner.test(test_groups, test_size, rng)
  out.parent.mkdir(parents=True, exist_ok=True)
  scratch = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
  try:
    _write_cuts(scratch, cuts, photos, progress)
    (scratch / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    scratch.replace(out)
  except BaseException:
    shutil.rmtree(scratch, ignore_errors=True)
    raise
  return out


def read_photo(path: str | os.PathLike, max_side: int = 0) -> np.ndarray:
  """Reads a photo as uint8 RGB (as `files.read_rgb`), turned upright as its EXIF orientation
  says, and shrunk (bicubic) so that its longer side is at most `max_side` (0: any size)."""
  pixels = files.read_rgb(path)
  try:
    with Image.open(path) as image:
      orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
  except (OSError, SyntaxError, ValueError) as error:
    raise files.DatasetError(f"{path}: unreadable EXIF data ({error})") from None
  if orientation != 1:
    upright = Image.fromarray(pixels)
    upright.getexif()[ExifTags.Base.Orientation] = orientation
    pixels = np.asarray(ImageOps.exif_transpose(upright))
  height, width = pixels.shape[:2]
  if max_side and max(height, width) > max_side:
    factor = max_side / max(height, width)
    pixels = samples.resize_bicubic(pixels, max(1, round(height * factor)),
                                    max(1, round(width * factor)))
  return pixels


def min_photo_side(patch_size: int, test_fraction: float) -> int:
  """The shortest longer side whose training band holds a patch_size window."""
  side = patch_size
  while int(side * (1 - test_fraction)) < patch_size:
    side += 1
  return side


def find_photos(photos_dir: str | os.PathLike, *, patch_size: int,
                test_fraction: float = DEFAULT_TEST_FRACTION, max_side: int = 0,
                progress: Progress = no_progress) -> tuple[list[Photo], list[str]]:
  """Reads every photo under `photos_dir` once, to check it and learn its size.

  Files are the non-hidden ones with a photo suffix (PHOTO_SUFFIXES, any case), at any depth,
  sorted by relative path. A photo in a subfolder belongs to the group named after that folder
  (like CUFED's events); one directly in `photos_dir` is a group of its own.

  Returns:
    The usable photos, and one line per skipped file: unreadable, too small for a training
    patch, or the same pixels as an earlier file.

  Raises:
    files.MissingDataError: the directory does not exist or holds no photo files.
  """
  root = pathlib.Path(photos_dir)
  if not root.is_dir():
    raise files.MissingDataError(f"{root}: directory not found, expected a directory of photos")
  paths = sorted((p for p in root.rglob("*")
                  if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts)),
                 key=lambda p: p.relative_to(root).as_posix())
  if not paths:
    raise files.MissingDataError(
        f"{root}: no photos found, expected files ending in {', '.join(PHOTO_SUFFIXES)}")
  photos, skipped, seen = [], [], {}
  long_side = min_photo_side(patch_size, test_fraction)
  for path in progress(paths, "reading photos"):
    try:
      pixels = read_photo(path, max_side)
    except (files.DatasetError, Image.DecompressionBombError) as error:
      skipped.append(str(error) if str(path) in str(error) else f"{path}: {error}")
      continue
    height, width = pixels.shape[:2]
    if not _Bands(height, width, test_fraction).fits(patch_size, patch_size, train=True):
      skipped.append(f"{path}: photo is {width} x {height}, expected at least {patch_size} on "
                     f"the shorter side and {long_side} on the longer (a {patch_size} x "
                     f"{patch_size} patch in the first {1 - test_fraction:.0%})")
      continue
    digest = hashlib.sha256(pixels.tobytes() + str(pixels.shape).encode()).hexdigest()
    if digest in seen:
      skipped.append(f"{path}: same pixels as {seen[digest]}")
      continue
    seen[digest] = path
    relative = path.relative_to(root)
    group = relative.as_posix() if relative.parent == pathlib.Path(".") else \
        relative.parent.as_posix()
    photos.append(Photo(relative.as_posix(), height, width, group,
                        load=lambda path=path: read_photo(path, max_side)))
  return photos, skipped

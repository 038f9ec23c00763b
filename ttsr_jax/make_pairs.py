r"""Makes a CUFED-layout dataset from a folder of your own photos (for training and evaluation).

  python -m ttsr_jax.make_pairs --photos DIR --out DIR [--patch_size 160] \
      [--pairs_per_photo 10] [--test_fraction 0.3] [--test_groups N] [--test_size 240] \
      [--max_side 0] [--similar [--vgg19_weights FILE]] [--seed 0]

Photos are JPEG, PNG, WebP (also BMP, TIFF) files of any size and mode at any depth under
--photos; a subfolder is a group of related photos (an event, like CUFED's albums), a photo
directly in --photos a group of its own. Each photo is turned upright by its EXIF orientation and
split along its longer side: training pairs come from the first part, one CUFED5-style test group
(a test image and five references of decreasing similarity) from the held-out rest, so no test
pixel is ever a training input. Training references come in turn from the photo itself, the
other photos of its group and, with --similar, the photo outside its group with the closest
VGG19 texture statistics, so that a folder of unrelated photos still gets meaningful references.
The rules are those of the demo (`data_pipeline.pairs`, docs/data.md). Unreadable, too small and
duplicate files are skipped and listed at the end. The same photos and seed give byte-identical
files. DIR (--out) must be new or empty (or hold this command's earlier output with the same
settings, which is then kept); it appears only once complete. Training prepares the TFDS dataset
of the patch size its config reads, on first use.
"""

import argparse
import pathlib
import sys

import tqdm

from data_pipeline import files
from data_pipeline import pairs
from data_pipeline import samples


def _progress(items, description: str):
  return tqdm.tqdm(items, desc=description, unit="", dynamic_ncols=True, file=sys.stderr)


def _positive(text: str) -> int:
  value = int(text)
  if value <= 0:
    raise argparse.ArgumentTypeError(f"{text}: expected a positive integer")
  return value


def _count(text: str) -> int:
  value = int(text)
  if value < 0:
    raise argparse.ArgumentTypeError(f"{text}: expected 0 or a positive integer")
  return value


def _fraction(text: str) -> float:
  value = float(text)
  if not 0 < value < 1:
    raise argparse.ArgumentTypeError(f"{text}: expected a number between 0 and 1")
  return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m ttsr_jax.make_pairs", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--photos", required=True, help="folder of photos; subfolders are groups")
  parser.add_argument("--out", required=True, help="directory to create (CUFED layout)")
  parser.add_argument("--patch_size", type=_positive, default=samples.DEFAULT_PATCH_SIZE,
                      help=f"side of a training input (a multiple of {samples.SCALE}); smaller "
                      "photos are skipped")
  parser.add_argument("--pairs_per_photo", type=_positive, default=10,
                      help="training pairs cut from each photo")
  parser.add_argument("--test_fraction", type=_fraction, default=pairs.DEFAULT_TEST_FRACTION,
                      help="part of each photo's longer side held out for its test image")
  parser.add_argument("--test_groups", type=_count, default=0,
                      help="CUFED5 test groups, taken from the photos in path order "
                      "(0: one per photo)")
  parser.add_argument("--test_size", type=_positive, default=240,
                      help="largest side of a test image and its references")
  parser.add_argument("--max_side", type=_count, default=0,
                      help="first shrink (bicubic) photos whose longer side is larger than this "
                      "(e.g. 500 for camera photos, so that a patch holds more than a detail); "
                      "0 keeps sizes")
  parser.add_argument("--similar", action="store_true",
                      help="also take references from the most similar photo outside each "
                      "photo's group, by VGG19 relu3_1 texture statistics (a randomly initialised "
                      "VGG19 unless --vgg19_weights is given)")
  parser.add_argument("--vgg19_weights", default=None,
                      help="converted VGG19 .npz for --similar (python -m ttsr_jax.tools.vgg19)")
  parser.add_argument("--similarity_size", type=_positive, default=128,
                      help="side photos are resized to for --similar")
  parser.add_argument("--seed", type=int, default=0,
                      help="seeds every draw: the same photos and seed give the same files")
  args = parser.parse_args(argv)
  if args.patch_size % samples.SCALE:
    parser.error(f"--patch_size {args.patch_size}: expected a multiple of {samples.SCALE}")
  if args.vgg19_weights and not args.similar:
    parser.error("--vgg19_weights is used by --similar only; add --similar")
  return args


def _make(args: argparse.Namespace, skipped: list[str]) -> tuple[pathlib.Path, list[pairs.Photo]]:
  """Makes the dataset; appends the skipped files' lines to `skipped` as soon as they are known."""
  pairs.check_new_directory(args.out)  # before the long work starts (the weights too, next)
  if args.similar:
    # Imported here: JAX starts only when it is needed.
    from ttsr_jax import similarity  # pylint: disable=import-outside-toplevel
    try:
      vgg_params = similarity.vgg_params(args.vgg19_weights, args.seed)
    except (ValueError, ImportError) as error:  # not VGG19 weights; a .pt without torch
      raise files.DatasetError(
          f"--vgg19_weights {args.vgg19_weights}: expected VGG19 weights converted by "
          f"python -m ttsr_jax.tools.vgg19 ({error})") from None
  photos, found_skipped = pairs.find_photos(args.photos, patch_size=args.patch_size,
                                            test_fraction=args.test_fraction,
                                            max_side=args.max_side, progress=_progress)
  skipped += found_skipped
  if not photos:
    raise files.DatasetError(f"{args.photos}: none of its {len(skipped)} photo files is usable "
                             "(see the list above)")
  similar = None
  if args.similar:
    similar = similarity.similar_photos(photos, vgg_params, args.similarity_size, _progress)
  out = pairs.make_dataset(
      args.out, photos, train_pairs=args.pairs_per_photo * len(photos),
      patch_size=args.patch_size, test_groups=args.test_groups or len(photos),
      test_size=args.test_size, seed=args.seed, test_fraction=args.test_fraction,
      similar=similar, progress=_progress)
  return out, photos


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  skipped: list[str] = []
  try:
    out, photos = _make(args, skipped)
  except (files.DatasetError, FileExistsError, FileNotFoundError) as error:
    _report_skipped(skipped)
    print(f"error: {error}", file=sys.stderr)
    return 1
  _report_skipped(skipped)
  groups = len({p.group for p in photos})
  test_groups = args.test_groups or len(photos)
  print(f"{len(photos)} photos in {groups} groups: {args.pairs_per_photo * len(photos)} training "
        f"pairs and {test_groups} test groups in {out}")
  return 0


def _report_skipped(skipped: list[str]) -> None:
  if skipped:
    print(f"skipped {len(skipped)} files:")
    for line in skipped:
      print(f"  {line}")


if __name__ == "__main__":
  sys.exit(main())

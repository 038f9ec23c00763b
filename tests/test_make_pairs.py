"""`python -m ttsr_jax.make_pairs` on small generated photo collections."""

import contextlib
import hashlib
import io
import pathlib

import numpy as np
import pytest
from PIL import ExifTags, Image

from data_pipeline import files
from data_pipeline import make_demo
from ttsr_jax import make_pairs
from data_pipeline import pairs
from ttsr_jax import similarity

PATCH = 16
TEST_SIZE = 16
PAIRS_PER_PHOTO = 3
# Blue values of the photos whose red and green channels are their x and y coordinates; the other
# photos have blue below 150, so a window of a coded photo is recognised by its blue alone.
CODES = {"a/one.png": 200, "a/b/two.webp": 210, "c/four.png": 220, "seven.png": 230}
SKIPPED = ("broken.jpg", "seven_copy.png", "tiny.png")  # in path order


def coded(height: int, width: int, blue: int) -> np.ndarray:
  y, x = np.mgrid[:height, :width]
  return np.stack([x, y, np.full_like(x, blue)], axis=-1).astype(np.uint8)


def quadrants(height: int, width: int) -> np.ndarray:
  """Four flat colours (blue below 150), distinct enough to survive JPEG."""
  image = np.zeros((height, width, 3), np.uint8)
  image[:height // 2, :width // 2] = (250, 0, 0)
  image[:height // 2, width // 2:] = (0, 250, 0)
  image[height // 2:, :width // 2] = (0, 0, 140)
  image[height // 2:, width // 2:] = (250, 250, 0)
  return image


def write_collection(root: pathlib.Path) -> None:
  """Mixed formats and modes, nested groups, an EXIF-rotated JPEG and files to skip or ignore."""
  for sub in ("a/b", "c"):
    (root / sub).mkdir(parents=True)
  Image.fromarray(coded(40, 56, CODES["a/one.png"])).save(root / "a/one.png")
  Image.fromarray(coded(48, 40, CODES["a/b/two.webp"])).save(root / "a/b/two.webp", lossless=True)
  gray = np.random.default_rng(0).integers(0, 150, (36, 50), dtype=np.uint8)
  Image.fromarray(gray, mode="L").save(root / "a/b/three.png")
  rgba = np.concatenate([coded(44, 44, CODES["c/four.png"]), np.full((44, 44, 1), 90, np.uint8)],
                        axis=-1)
  Image.fromarray(rgba, mode="RGBA").save(root / "c/four.png")
  Image.fromarray(quadrants(40, 60)).convert("P", palette=Image.Palette.ADAPTIVE).save(
      root / "c/five.png")
  exif = Image.Exif()
  exif[ExifTags.Base.Orientation] = 6  # shown turned 90 degrees clockwise
  Image.fromarray(quadrants(32, 48)).save(root / "six.jpg", exif=exif, quality=95)
  Image.fromarray(coded(34, 52, CODES["seven.png"])).save(root / "seven.png")
  Image.fromarray(coded(34, 52, CODES["seven.png"])).save(root / "seven_copy.png")  # same pixels
  (root / "broken.jpg").write_bytes((root / "six.jpg").read_bytes()[:300])
  Image.fromarray(coded(10, 10, 20)).save(root / "tiny.png")
  (root / "notes.txt").write_text("not a photo")
  Image.fromarray(coded(40, 40, 20)).save(root / ".hidden.png")


def run(photos: pathlib.Path, out: pathlib.Path, *extra: str) -> int:
  return make_pairs.main(["--photos", str(photos), "--out", str(out), "--patch_size", str(PATCH),
                          "--pairs_per_photo", str(PAIRS_PER_PHOTO), "--test_size",
                          str(TEST_SIZE), "--seed", "5", *extra])


def tree_digest(root: pathlib.Path) -> str:
  hasher = hashlib.sha256()
  for path in sorted(root.rglob("*")):
    hasher.update(path.relative_to(root).as_posix().encode())
    if path.is_file():
      hasher.update(path.read_bytes())
  return hasher.hexdigest()


def read(path: pathlib.Path) -> np.ndarray:
  return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> pathlib.Path:
  root = tmp_path_factory.mktemp("photos")
  write_collection(root)
  return root


@pytest.fixture(scope="module")
def made(collection, tmp_path_factory) -> tuple[pathlib.Path, str]:
  """The dataset made from `collection` by the command, and what the command printed."""
  out = tmp_path_factory.mktemp("made") / "dataset"
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    assert run(collection, out) == 0
  return out, printed.getvalue()


def test_photos_are_read_upright_in_rgb_with_their_folders_as_groups(collection):
  photos, _ = pairs.find_photos(collection, patch_size=PATCH)
  found = {p.name: p for p in photos}
  assert list(found) == ["a/b/three.png", "a/b/two.webp", "a/one.png", "c/five.png",
                         "c/four.png", "seven.png", "six.jpg"]
  assert {name: p.group for name, p in found.items()} == {
      "a/b/three.png": "a/b", "a/b/two.webp": "a/b", "a/one.png": "a", "c/five.png": "c",
      "c/four.png": "c", "seven.png": "seven.png", "six.jpg": "six.jpg"}
  for photo in photos:
    pixels = photo.load()
    assert pixels.dtype == np.uint8 and pixels.shape == (photo.height, photo.width, 3)
  # The JPEG is stored 32x48 with EXIF orientation 6: upright it is 48x32, turned clockwise.
  upright = found["six.jpg"].load()
  assert upright.shape == (48, 32, 3)
  # (JPEG blurs colour edges; turned the wrong way, the mean error would be about 100.)
  assert np.abs(upright.astype(int) - np.rot90(quadrants(32, 48), -1)).mean() < 10
  gray = found["a/b/three.png"].load()
  assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
  np.testing.assert_array_equal(found["c/four.png"].load(), coded(44, 44, CODES["c/four.png"]))


def test_layout_and_skip_list(made, collection):
  out, printed = made
  pairs_found = files.train_pairs(out)
  assert len(pairs_found) == PAIRS_PER_PHOTO * 7
  for input_path, ref_path in pairs_found:
    assert read(input_path).shape == (PATCH, PATCH, 3)
    ref_h, ref_w, _ = read(ref_path).shape
    assert PATCH * 5 // 8 <= min(ref_h, ref_w) and max(ref_h, ref_w) <= PATCH
  groups = files.cufed5_groups(out)
  assert len(groups) == 7
  for group in groups:
    shape = read(group.hr).shape
    assert max(shape[:2]) <= TEST_SIZE
    assert all(read(ref).shape == shape for ref in group.refs)
  skipped = [line.strip() for line in printed.splitlines() if line.startswith("  ")]
  assert f"skipped {len(SKIPPED)} files:" in printed
  assert [line.split(":")[0] for line in skipped] == [str(collection / n) for n in SKIPPED]
  assert "unreadable or truncated image" in skipped[0]
  assert skipped[1].endswith(f"same pixels as {collection / 'seven.png'}")
  assert "photo is 10 x 10, expected at least 16 on the shorter side and 23" in skipped[2]
  assert "7 photos in 5 groups" in printed
  assert not any(p.name.startswith(".") for p in out.parent.iterdir())  # no scratch left


def test_no_test_pixel_is_ever_a_training_input(made):
  out, _ = made
  sizes = {"a/one.png": (40, 56), "a/b/two.webp": (48, 40), "c/four.png": (44, 44),
           "seven.png": (34, 52)}
  photo_of = {blue: name for name, blue in CODES.items()}

  def coordinates(path: pathlib.Path) -> tuple[str, np.ndarray, np.ndarray] | None:
    image = read(path).astype(int)
    blues = set(np.unique(image[..., 2]))
    if len(blues) != 1 or blues.pop() not in photo_of:
      return None
    return photo_of[image[0, 0, 2]], image[..., 1], image[..., 0]  # photo, y, x

  def in_training_band(name: str, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    height, width = sizes[name]
    return x < int(width * 0.7) if width >= height else y < int(height * 0.7)

  checked = set()
  for input_path, _ in files.train_pairs(out):
    if (found := coordinates(input_path)) is not None:
      assert in_training_band(*found).all(), input_path
      checked.add(found[0])
  assert checked == set(CODES)
  tested = set()
  for group in files.cufed5_groups(out):
    if (found := coordinates(group.hr)) is not None:
      assert not in_training_band(*found).any(), group.hr
      tested.add(found[0])
  assert tested == set(CODES)


def test_photos_of_a_group_give_each_other_references(made):
  """a/b/three.png (grey) is the first photo and shares group a/b with two.webp (blue 210):
  its second training pair (index 7: pairs cycle through the 7 photos) and its test group's
  level-4 reference come from two.webp."""
  out, _ = made

  def from_two(path: pathlib.Path) -> bool:  # bicubic resizing may move a flat channel by one
    return bool((abs(read(path)[..., 2].astype(int) - CODES["a/b/two.webp"]) <= 1).all())

  inputs, refs = zip(*files.train_pairs(out))
  assert not from_two(inputs[7]) and from_two(refs[7])
  assert not from_two(refs[0])  # the first pair's reference is the photo itself
  assert from_two(files.cufed5_groups(out)[0].refs[3])


def test_the_same_seed_gives_byte_identical_files(made, collection, tmp_path):
  out, _ = made
  assert run(collection, tmp_path / "again") == 0
  assert tree_digest(tmp_path / "again") == tree_digest(out)
  assert run(collection, tmp_path / "other_seed", "--seed", "6") == 0
  assert tree_digest(tmp_path / "other_seed") != tree_digest(out)


def test_existing_output_and_a_failed_write_leave_nothing_behind(collection, tmp_path, capsys):
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "keep.txt").write_text("")
  assert run(collection, tmp_path / "full") == 1
  assert "full: already exists, expected a new or empty directory" in capsys.readouterr().err

  def fail() -> np.ndarray:
    raise files.DatasetError("gone")

  photo = pairs.Photo("gone.png", 32, 32, "gone.png", load=fail)
  with pytest.raises(files.DatasetError, match="gone"):
    pairs.make_dataset(tmp_path / "partial", [photo], train_pairs=2, patch_size=PATCH,
                       test_groups=1, test_size=TEST_SIZE)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]


def test_similar_photos_become_references_of_unrelated_photos(tmp_path):
  """Four unrelated photos: two smooth red ones (green 0 and 40) and two green noise ones. With
  a random VGG19, each one's most similar photo is its look-alike, which then gives references."""
  rng = np.random.default_rng(1)
  ramp = np.linspace(120, 250, 40).astype(np.uint8)
  for name, green in (("a.png", 0), ("b.png", 40)):
    image = np.zeros((28, 40, 3), np.uint8)
    image[..., 0], image[..., 1] = ramp, green
    Image.fromarray(image).save(tmp_path / name)
  for name in ("c.png", "d.png"):
    noise = np.zeros((28, 40, 3), np.uint8)
    noise[..., 1] = rng.integers(0, 256, (28, 40))
    Image.fromarray(noise).save(tmp_path / name)
  photos, _ = pairs.find_photos(tmp_path, patch_size=PATCH)
  similar = similarity.similar_photos(photos, similarity.vgg_params(None), size=32)
  assert similar == {"a.png": "b.png", "b.png": "a.png", "c.png": "d.png", "d.png": "c.png"}

  out = tmp_path / "out"
  pairs.make_dataset(out, photos, train_pairs=8, patch_size=PATCH, test_groups=4,
                     test_size=TEST_SIZE, similar=similar)
  # Pairs cycle a, b, c, d; a's second pair (index 4) takes its reference from b (green 40).
  # (Bicubic resizing may move a flat channel by one level.)
  assert read(out / "train/ref/000000.png")[..., 1].max() <= 1
  assert (abs(read(out / "train/ref/000004.png")[..., 1].astype(int) - 40) <= 1).all()
  # Group 000 is a's test image; its level-4 reference comes from b.
  assert (abs(read(out / "test/CUFED5/000_4.png")[..., 1].astype(int) - 40) <= 1).all()


def test_most_similar_skips_the_photos_own_group():
  descriptor = np.eye(3, dtype=np.float32)[[0, 0, 1, 2]]
  descriptor[3] = [0.9, 0.1, 0.0]
  assert similarity.most_similar(descriptor, ["g", "g", "h", "i"]) == [3, 3, 3, 0]
  assert similarity.most_similar(descriptor[:2], ["g", "g"]) == [None, None]


def test_the_same_command_again_keeps_the_dataset_and_other_settings_are_refused(tmp_path):
  out = make_demo.make_demo(tmp_path / "demo", train_pairs=2, patch_size=32, test_groups=1,
                            test_size=48)
  before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
  assert make_demo.make_demo(out, train_pairs=2, patch_size=32, test_groups=1, test_size=48) == out
  assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
  with pytest.raises(FileExistsError, match="holds a dataset made from other photos or settings"):
    make_demo.make_demo(out, train_pairs=3, patch_size=32, test_groups=1, test_size=48)

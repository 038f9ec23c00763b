"""data_pipeline: reference-identical samples (case f), determinism, host shards, bad input."""

import contextlib
import hashlib
import io
import itertools
import logging
import pathlib
import re
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data_pipeline import cufed
from data_pipeline import cufed5
from data_pipeline import host_to_device
from data_pipeline import files
from data_pipeline import make_demo
from data_pipeline import samples
from data_pipeline import train_batches
from parity import load_case

REPO = pathlib.Path(__file__).resolve().parents[1]
# The reference's names for the sample entries in case f.
REFERENCE_KEYS = {"lr": "LR", "lrsr": "LR_sr", "hr": "HR", "ref": "Ref", "refsr": "Ref_sr"}
TINY_PATCH = 32
TINY_BATCH = 4


def assert_same_bits(actual: np.ndarray, expected: np.ndarray) -> None:
  assert actual.dtype == expected.dtype and actual.shape == expected.shape
  assert actual.tobytes() == expected.tobytes()


def assert_matches_case(sample: dict[str, np.ndarray], case: dict[str, np.ndarray],
                        prefix: str) -> None:
  """`sample` (uint8 or float32, HWC) normalised equals the case's CHW float32 arrays."""
  for key, name in REFERENCE_KEYS.items():
    image = sample[key] if sample[key].dtype == np.float32 else samples.normalize(sample[key])
    assert_same_bits(np.ascontiguousarray(image.transpose(2, 0, 1)), case[f"{prefix}/{name}"])


def save(image: np.ndarray, path: pathlib.Path) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(image).save(path)


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> pathlib.Path:
  """The tiny demo dataset, made by its command and prepared as training prepares it."""
  out = tmp_path_factory.mktemp("tiny")
  make_demo.main(["--out", str(out), "--tiny"])
  cufed.prepare(out, patch_size=TINY_PATCH)
  return out


@pytest.fixture(scope="module")
def shard(tiny) -> train_batches.TrainShard:
  return train_batches.load_train_shard(cufed.default_data_dir(tiny), TINY_PATCH)


def epoch_batches(shard: train_batches.TrainShard, **kwargs) -> list[dict[str, np.ndarray]]:
  kwargs = {"seed": 3, "epoch": 2, "global_batch_size": TINY_BATCH} | kwargs
  return list(train_batches.train_dataset(shard, **kwargs).as_numpy_iterator())


def digest(batches: list[dict[str, np.ndarray]]) -> str:
  hasher = hashlib.sha256()
  for batch in batches:
    for key in sorted(batch):
      hasher.update(batch[key].tobytes())
  return hasher.hexdigest()


# Case f: the reference's own samples.

def test_train_sample_matches_reference():
  case = load_case("f_data_pipeline.npz")
  sample = samples.make_train_sample(case["train/input_uint8"], case["train/ref_uint8"])
  assert_matches_case(sample, case, "train")
  np.testing.assert_array_equal(sample["ref_size"], case["train/ref_uint8"].shape[:2])


def test_augmented_train_sample_matches_reference():
  case = load_case("f_data_pipeline.npz")
  sample = samples.make_train_sample(case["train/input_uint8"], case["train/ref_uint8"])
  draws = tf.constant(case["train_aug/draws"], tf.int32)
  np.testing.assert_array_equal(draws, [1, 0, 1, 0, 3, 3])
  images = {key: tf.constant(sample[key]) for key in samples.IMAGE_KEYS}
  augmented = {key: image.numpy()
               for key, image in train_batches.apply_draws(images, draws).items()}
  assert_matches_case(augmented, case, "train_aug")


def test_cufed5_sample_matches_reference(tmp_path):
  case = load_case("f_data_pipeline.npz")
  save(case["test/hr_uint8"], tmp_path / "test" / "CUFED5" / "000_0.png")
  for level in range(1, files.NUM_LEVELS + 1):
    save(case["test/ref_uint8"], tmp_path / "test" / "CUFED5" / f"000_{level}.png")
  [(name, batch)] = list(cufed5.level_samples(tmp_path, level=1))
  assert name == "000"
  assert_matches_case({key: image[0] for key, image in batch.items()}, case, "test")


@pytest.mark.parametrize("height, width", [(160, 160), (120, 40), (400, 100), (48, 400)])
def test_resize_runs_the_horizontal_pass_first_on_any_pillow(height, width):
  # Tall shapes are those Pillow 13's one-call resize does vertically first; the golden samples
  # (made with Pillow 13.0.0) have shapes where both orders agree.
  image = np.random.default_rng(height + width).integers(0, 256, (height, width, 3), np.uint8)
  bicubic = Image.Resampling.BICUBIC
  for size in ((height // 4, width // 4), (height * 4, width * 4)):
    horizontal_first = (Image.fromarray(image).resize((size[1], height), bicubic)
                        .resize(size[::-1], bicubic))
    result = samples.resize_bicubic(image, *size)
    np.testing.assert_array_equal(result, np.asarray(horizontal_first))
    if int(Image.__version__.split(".")[0]) < 13:  # one call ran the same two passes then
      np.testing.assert_array_equal(result, np.asarray(Image.fromarray(image).resize(
          size[::-1], bicubic)))


# The prepared dataset and the training pipeline.

def test_prepared_examples_equal_the_reference_samples(tiny, shard):
  pairs = files.train_pairs(tiny)
  assert len(shard.indices) == shard.num_examples == len(pairs)
  batches = epoch_batches(shard, augment=False)
  assert batches[0]["hr"].shape == (TINY_BATCH, TINY_PATCH, TINY_PATCH, 3)
  assert batches[0]["lr"].shape == (TINY_BATCH, TINY_PATCH // 4, TINY_PATCH // 4, 3)
  for batch in batches:
    for row, index in enumerate(batch["index"]):
      input_path, ref_path = pairs[index]
      expected = samples.make_train_sample(files.read_rgb(input_path), files.read_rgb(ref_path),
                                           TINY_PATCH)
      for key in samples.IMAGE_KEYS:
        assert_same_bits(batch[key][row], expected[key])


def reference_augment(image: np.ndarray, flip_w: int, flip_h: int, k: int) -> np.ndarray:
  """One group's transform, written as the reference's RandomFlip then RandomRotate."""
  image = np.fliplr(image) if flip_w else image
  image = np.flipud(image) if flip_h else image
  return np.rot90(image, k)


def test_apply_draws_equals_the_reference_transforms_for_every_draw():
  image = np.arange(3 * 4 * 2).reshape(3, 4, 2)  # non-square, so transposes show
  sample = {"hr": image, "ref": image + 100}  # one image of each group
  for draws in itertools.product((0, 1), (0, 1), (0, 1), (0, 1), range(4), range(4)):
    augmented = train_batches.apply_draws({k: tf.constant(v) for k, v in sample.items()},
                                  tf.constant(draws))
    for key, value in sample.items():
      group = int(key.startswith("ref"))
      expected = reference_augment(value, draws[group], draws[2 + group], draws[4 + group])
      np.testing.assert_array_equal(augmented[key], expected, err_msg=f"{key} {draws}")


def test_augmentation_is_the_draws_of_seed_epoch_and_index(shard):
  plain = epoch_batches(shard, augment=False)
  augmented = epoch_batches(shard)
  for before, after in zip(plain, augmented):
    np.testing.assert_array_equal(before["index"], after["index"])
    for row, index in enumerate(before["index"]):
      draws = train_batches.augment_draws(3, 2, index)
      expected = train_batches.apply_draws(
          {k: tf.constant(before[k][row]) for k in samples.IMAGE_KEYS}, draws)
      for key in samples.IMAGE_KEYS:
        assert_same_bits(after[key][row], expected[key].numpy())
  all_draws = np.stack([train_batches.augment_draws(3, 2, i).numpy() for i in range(200)])
  assert all_draws.min() == 0 and list(all_draws.max(0)) == [1, 1, 1, 1, 3, 3]


def test_epoch_order_is_a_permutation_that_depends_on_seed_and_epoch():
  order = train_batches.epoch_order(0, 0, 100)
  assert sorted(order) == list(range(100))
  np.testing.assert_array_equal(order, train_batches.epoch_order(0, 0, 100))
  assert list(order) != list(train_batches.epoch_order(0, 1, 100))
  assert list(order) != list(train_batches.epoch_order(1, 0, 100))


@pytest.mark.slow  # a second Python process
def test_same_seed_and_epoch_give_identical_batches_in_another_process(tiny, shard):
  batches = epoch_batches(shard)
  assert len(batches) == shard.steps_per_epoch(TINY_BATCH) == shard.num_examples // TINY_BATCH
  program = (
      "import sys; sys.path.insert(0, 'tests')\n"
      "from test_data_pipeline import digest, epoch_batches\n"
      "from data_pipeline import cufed, train_batches\n"
      "shard = train_batches.load_train_shard("
      f"cufed.default_data_dir({str(tiny)!r}), {TINY_PATCH})\n"
      "print(digest(epoch_batches(shard)))\n")
  result = subprocess.run([sys.executable, "-c", program], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=True)
  assert result.stdout.split()[-1] == digest(batches)
  assert digest(epoch_batches(shard, epoch=3)) != digest(batches)


def test_resuming_at_batch_k_reproduces_the_rest_of_the_epoch(shard):
  batches = epoch_batches(shard)
  for start in (1, len(batches) - 1, len(batches)):
    assert digest(epoch_batches(shard, start_batch=start)) == digest(batches[start:])
  with pytest.raises(ValueError, match="start_batch"):
    epoch_batches(shard, start_batch=len(batches) + 1)


def test_two_hosts_read_disjoint_shards_that_cover_the_data(tiny, shard):
  data_dir = cufed.default_data_dir(tiny)
  hosts = [train_batches.load_train_shard(data_dir, TINY_PATCH, process_index=i, process_count=2)
           for i in range(2)]
  assert not set(hosts[0].indices) & set(hosts[1].indices)
  assert sorted([*hosts[0].indices, *hosts[1].indices]) == list(range(shard.num_examples))
  host_batches = [epoch_batches(host) for host in hosts]
  steps = hosts[0].steps_per_epoch(TINY_BATCH)
  assert steps == hosts[1].steps_per_epoch(TINY_BATCH) == shard.num_examples // 2 // 2
  global_order = list(train_batches.epoch_order(3, 2, shard.num_examples))
  for host, batches in zip(hosts, host_batches):
    assert len(batches) == steps
    seen = [int(i) for batch in batches for i in batch["index"]]
    # Each host follows the epoch's global order, restricted to its own examples.
    assert seen == [i for i in global_order if i in set(host.indices)][:len(seen)]


@pytest.mark.parametrize("axis_type", ["explicit", "auto"])
def test_train_iterator_yields_globally_sharded_normalised_arrays(shard, axis_type):
  axis_types = {"explicit": jax.sharding.AxisType.Explicit, "auto": jax.sharding.AxisType.Auto}
  mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(axis_types[axis_type],))
  global_batch = TINY_BATCH * jax.device_count()
  expected = epoch_batches(shard, global_batch_size=global_batch)
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  produced = list(train_batches.train_iterator(shard, seed=3, epoch=2,
                                               global_batch_size=global_batch,
                                               batch_sharding=sharding))
  assert len(produced) == len(expected)
  for batch, host_batch in zip(produced, expected):
    assert set(batch) == set(samples.IMAGE_KEYS)
    for key, array in batch.items():
      assert array.sharding.is_equivalent_to(sharding, array.ndim)
      assert_same_bits(np.asarray(array), samples.normalize(host_batch[key]))
  with pytest.raises(ValueError, match="multiple of the process count"):
    next(train_batches.train_iterator(shard, seed=3, epoch=2, global_batch_size=0,
                                      batch_sharding=sharding))


# The test set.

def test_level_samples_crop_to_multiples_of_four(tiny):
  groups = files.cufed5_groups(tiny)
  for level in (1, 5):
    for (name, batch), group in zip(cufed5.level_samples(tiny, level), groups):
      hr, ref = files.read_rgb(group.hr), files.read_rgb(group.refs[level - 1])
      assert name == group.name
      assert batch["hr"].shape == (1, hr.shape[0] // 4 * 4, hr.shape[1] // 4 * 4, 3)
      assert batch["ref"].shape == (1, ref.shape[0] // 4 * 4, ref.shape[1] // 4 * 4, 3)
      assert batch["lr"].shape[1:3] == (batch["hr"].shape[1] // 4, batch["hr"].shape[2] // 4)
  with pytest.raises(ValueError, match="level 6"):
    cufed5.level_samples(tiny, 6)


def test_multi_reference_stacks_five_padded_tiles(tiny):
  group = files.cufed5_groups(tiny)[0]
  name, batch = next(cufed5.multi_reference_samples(tiny))
  assert name == group.name
  assert batch["ref"].shape == batch["refsr"].shape == (1, 2500, 500, 3)
  for level, path in enumerate(group.refs):
    ref = files.read_rgb(path)
    tile = batch["ref"][0, level * 500:(level + 1) * 500]
    height, width = ref.shape[:2]
    assert_same_bits(tile[:height, :width], samples.normalize(ref))
    assert (tile[height:] == -1).all() and (tile[:, width:] == -1).all()
  stitched = samples.stitch_references([files.read_rgb(p) for p in group.refs])
  expected = samples.make_test_sample(files.read_rgb(group.hr), stitched)
  assert_same_bits(batch["refsr"][0], samples.normalize(expected["refsr"]))


# Odd but acceptable input.

def encode(image: Image.Image) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, "PNG")
  return buffer.getvalue()


def test_image_modes_are_converted_to_8_bit_rgb(tmp_path):
  rgb = random_image(6, 5)
  gray = rgb[..., 0]
  cases = {
      "gray": (Image.fromarray(gray), np.repeat(gray[..., None], 3, -1)),
      "palette": (Image.fromarray(rgb).quantize(8), None),
      "rgba": (Image.fromarray(np.dstack([rgb, gray])), rgb),
      "gray16": (Image.fromarray(gray.astype(np.uint16) * 257),
                 np.repeat(gray[..., None], 3, -1)),
  }
  for name, (image, expected) in cases.items():
    path = tmp_path / f"{name}.png"
    path.write_bytes(encode(image))
    pixels = files.read_rgb(path)
    assert pixels.dtype == np.uint8 and pixels.shape == (6, 5, 3), name
    if expected is None:
      expected = np.asarray(image.convert("RGB"))
    np.testing.assert_array_equal(pixels, expected, err_msg=name)


def test_large_training_images_are_centre_cropped_with_a_count(tmp_path, caplog):
  inputs = [random_image(TINY_PATCH, TINY_PATCH, 1),
            random_image(TINY_PATCH + 8, TINY_PATCH + 3, 2)]
  refs = [random_image(TINY_PATCH + 6, 20, 3), random_image(21, 30, 4)]
  for i, (image, ref) in enumerate(zip(inputs, refs)):
    save(image, tmp_path / "train" / "input" / f"{i}.png")
    save(ref, tmp_path / "train" / "ref" / f"{i}.png")
  with caplog.at_level(logging.INFO):
    cufed.prepare(tmp_path, patch_size=TINY_PATCH)
  messages = [r.getMessage() for r in caplog.records]
  # The crop is information; TFDS's own INFO and WARNING records about the builder are dropped.
  assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
  assert not any("Using custom data configuration" in m or "dataset_info.json" in m
                 for m in messages)
  assert f"1 of 2 training input images were larger than {TINY_PATCH}x{TINY_PATCH} and " \
         "centre-cropped" in messages
  assert any(m.startswith("1 of 2 training ref images were larger") for m in messages)
  shard = train_batches.load_train_shard(cufed.default_data_dir(tmp_path), TINY_PATCH)
  [batch] = epoch_batches(shard, global_batch_size=2, augment=False)
  for row, index in enumerate(batch["index"]):
    expected = samples.make_train_sample(samples.center_crop(inputs[index], TINY_PATCH),
                                         samples.center_crop(refs[index], TINY_PATCH), TINY_PATCH)
    for key in samples.IMAGE_KEYS:
      assert_same_bits(batch[key][row], expected[key])
  np.testing.assert_array_equal(
      batch["hr"][list(batch["index"]).index(1)], inputs[1][4:4 + TINY_PATCH, 1:1 + TINY_PATCH])


# Bad input: one-line errors naming the path and what was expected.

@contextlib.contextmanager
def raises_one_line(error: type[Exception], match: str):
  with pytest.raises(error, match=match) as info:
    yield
  assert "\n" not in str(info.value)


def make_train_dir(root: pathlib.Path, inputs: list[str], refs: list[str]) -> None:
  for i, name in enumerate(inputs):
    save(random_image(TINY_PATCH, TINY_PATCH, i), root / "train" / "input" / name)
  for i, name in enumerate(refs):
    save(random_image(16, 16, i), root / "train" / "ref" / name)


def test_missing_and_empty_directories(tmp_path):
  with raises_one_line(files.MissingDataError,
                       re.escape(f"{tmp_path / 'train' / 'input'}: directory not found, expected "
                                 "a directory of images")):
    files.train_pairs(tmp_path)
  (tmp_path / "train" / "input").mkdir(parents=True)
  with raises_one_line(files.MissingDataError, "input: directory is empty, expected at least one"):
    files.train_pairs(tmp_path)
  with raises_one_line(FileNotFoundError, "CUFED5: directory not found, expected XXX_0.png"):
    files.cufed5_groups(tmp_path)
  with raises_one_line(files.MissingDataError, "directory not found"):
    cufed.prepare(tmp_path / "nowhere")
  assert not (tmp_path / "nowhere").exists()
  with raises_one_line(files.MissingDataError, "prepared dataset not found, expected the output "
                       "of `python -m data_pipeline.prepare"):
    train_batches.load_train_shard(tmp_path, TINY_PATCH)


def test_input_ref_count_mismatch_names_the_first_unmatched_files(tmp_path):
  make_train_dir(tmp_path, ["a.png", "b.png", "c.png"], ["a.png", "c.png"])
  with raises_one_line(files.DatasetError,
                       re.escape(f"{tmp_path / 'train'}: 3 files in input/ but 2 in ref/, expected "
                                 "one reference per input; first unmatched: input/b.png vs "
                                 "ref/c.png")):
    files.train_pairs(tmp_path)


def test_unreadable_and_truncated_images(tmp_path):
  garbage = tmp_path / "garbage.png"
  garbage.write_bytes(b"not an image at all")
  truncated = tmp_path / "truncated.png"
  truncated.write_bytes(encode(Image.fromarray(random_image(64, 64)))[:500])
  for path in (garbage, truncated):
    with raises_one_line(files.DatasetError, re.escape(
        f"{path}: unreadable or truncated image, expected a complete image file (")):
      files.read_rgb(path)
  with raises_one_line(files.MissingDataError, "absent.png: image file not found"):
    files.read_rgb(tmp_path / "absent.png")


def test_bad_training_image_stops_preparation_with_its_path(tmp_path):
  make_train_dir(tmp_path, ["a.png", "b.png"], ["a.png", "b.png"])
  bad = tmp_path / "train" / "ref" / "b.png"
  bad.write_bytes(b"broken")
  with raises_one_line(files.DatasetError, re.escape(f"{bad}: unreadable or truncated image")):
    cufed.prepare(tmp_path, patch_size=TINY_PATCH)
  small = tmp_path / "train" / "input" / "a.png"
  save(random_image(TINY_PATCH - 1, TINY_PATCH), small)
  save(random_image(16, 16), bad)
  with raises_one_line(files.DatasetError, re.escape(
      f"{small}: image is {TINY_PATCH} x {TINY_PATCH - 1}, expected at least "
      f"{TINY_PATCH} x {TINY_PATCH}")):
    cufed.prepare(tmp_path, patch_size=TINY_PATCH)


def test_test_group_missing_a_reference_level(tmp_path):
  directory = tmp_path / "test" / "CUFED5"
  for name in ("000_0", "000_1", "000_2", "000_4", "000_5"):
    save(random_image(12, 12), directory / f"{name}.png")
  with raises_one_line(files.MissingDataError, re.escape(
      f"{directory / '000_3.png'}: reference missing, expected levels 1-5 beside 000_0.png "
      "(missing: 000_3.png)")):
    list(cufed5.level_samples(tmp_path))


def test_prefetch_stops_its_producer_when_the_consumer_stops():
  produced = []

  def items():
    for i in range(1000):
      produced.append(i)
      yield i

  threads_before = threading.active_count()
  batches = host_to_device.prefetch(items(), 2)
  assert [next(batches) for _ in range(3)] == [0, 1, 2]
  batches.close()  # what a SIGTERM return from the training loop does
  # The producer has finished (a thread still inside tf.data at exit aborts the process), and
  # it ran at most the queue size plus the item in hand ahead of the consumer.
  assert threading.active_count() == threads_before
  assert len(produced) <= 3 + 2 + 1

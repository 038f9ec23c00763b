"""`python -m ttsr_jax.tools.vgg19`: torchvision and Keras VGG19 weights -> our VGG19, computing
the same function."""

import pathlib
import urllib.error

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttsr_jax.models.vgg import VGG19, VGG19_LAYERS
from ttsr_jax import vgg19_weights
from ttsr_jax.tools import vgg19

# Every conv of torchvision's VGG19 `features` (conv5_2 .. conv5_4 included, which the tool drops):
# (torchvision index, input channels, output channels).
_ALL_CONVS = ((0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256),
              (12, 256, 256), (14, 256, 256), (16, 256, 256), (19, 256, 512), (21, 512, 512),
              (23, 512, 512), (25, 512, 512), (28, 512, 512), (30, 512, 512), (32, 512, 512),
              (34, 512, 512))
_USED = 13  # conv1_1 ... conv5_1
# Keras' VGG19 layers (include_top=False), convs per block followed by a pool.
_KERAS_LAYERS = ["input_1"] + [name for block, convs in enumerate((2, 2, 4, 4, 4), 1) for name in (
    *(f"block{block}_conv{c}" for c in range(1, convs + 1)), f"block{block}_pool")]
_KERAS_CONVS = [name for name in _KERAS_LAYERS if "_conv" in name]
# Keras' caffe preprocessing, written out independently of the tool.
_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)
_TORCH_MEAN = np.array([0.485, 0.456, 0.406])


def _torchvision_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
  """Random He-scaled weights in torchvision's VGG19 layout, plus classifier entries to drop."""
  rng = np.random.default_rng(seed)
  state = {}
  for index, cin, cout in _ALL_CONVS:
    state[f"features.{index}.weight"] = (rng.standard_normal((cout, cin, 3, 3))
                                         * np.sqrt(2 / (9 * cin))).astype(np.float32)
    state[f"features.{index}.bias"] = rng.uniform(-0.05, 0.05, cout).astype(np.float32)
  state["classifier.6.weight"] = rng.standard_normal((10, 8)).astype(np.float32)
  state["classifier.6.bias"] = np.zeros(10, np.float32)
  return state


def _keras_weights(seed: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
  """(kernel HWIO with BGR inputs at conv1_1, bias) for Keras' 16 VGG19 convs."""
  state = _torchvision_state_dict(seed)
  return [(state[f"features.{i}.weight"].transpose(2, 3, 1, 0), state[f"features.{i}.bias"])
          for i, _, _ in _ALL_CONVS]


def _write_keras_legacy(path: pathlib.Path, weights) -> None:
  """The layout of Keras 2 `save_weights('x.h5')` and of the published
  vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5: root attribute `layer_names`, one group per
  layer with attribute `weight_names`, datasets at those (nested) names; pools hold no weights."""
  with h5py.File(path, "w") as f:
    f.attrs["layer_names"] = [n.encode() for n in _KERAS_LAYERS]
    f.attrs["backend"] = b"tensorflow"
    f.attrs["keras_version"] = b"2.2.4"
    convs = dict(zip(_KERAS_CONVS, weights))
    for name in _KERAS_LAYERS:
      group = f.create_group(name)
      if name in convs:
        names = [f"{name}/kernel:0", f"{name}/bias:0"]
        group.attrs["weight_names"] = [n.encode() for n in names]
        for n, value in zip(names, convs[name]):
          group.create_dataset(n, data=value)
      else:
        group.attrs["weight_names"] = np.array([], np.float64)


def _write_keras3(path: pathlib.Path, weights) -> None:
  """The layout of Keras 3 `model.save_weights('x.weights.h5')` for VGG19 (checked with Keras
  3.15): `layers/<class name>[_<n>]/vars/<i>` in build order; pools have empty `vars`."""
  with h5py.File(path, "w") as f:
    layers = f.create_group("layers")
    for i, (kernel, bias) in enumerate(weights):
      variables = layers.create_group("conv2d" if i == 0 else f"conv2d_{i}").create_group("vars")
      variables.create_dataset("0", data=kernel)
      variables.create_dataset("1", data=bias)
    for i in range(5):
      layers.create_group("max_pooling2d" if i == 0 else f"max_pooling2d_{i}").create_group("vars")
    f.create_group("vars")


@pytest.fixture(scope="module")
def image01() -> np.ndarray:
  """A 32x32 test image, uint8 values scaled to [0, 1] as the model's VGG input."""
  u8 = np.random.default_rng(7).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
  return u8.astype(np.float32) / np.float32(255)


@pytest.fixture(scope="module")
def vgg_features():
  return jax.jit(lambda params, x01: VGG19().apply({"params": params}, x01))


def _conv(x, kernel, bias, padding="SAME"):
  y = jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=(
      "NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST)
  return jax.nn.relu(y + bias)


@jax.jit
def _keras_relu5_1(u_bgr_centred, first_padding_value, weights):
  """Keras' VGG19 up to block5_conv1 on preprocessed input, but with conv1_1's input padded with
  `first_padding_value` (per channel) instead of zeros."""
  n, h, w, c = u_bgr_centred.shape
  x = jnp.broadcast_to(first_padding_value, (n, h + 2, w + 2, c))
  x = _conv(x.at[:, 1:-1, 1:-1].set(u_bgr_centred), *weights[0], padding="VALID")
  convs = iter(weights[1:])
  for layer in VGG19_LAYERS[1:]:
    if layer == "pool":
      x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    else:
      x = _conv(x, *next(convs))
  return x


def _run_tool(argv, capsys) -> tuple[int, str]:
  code = vgg19.main([str(a) for a in argv])
  captured = capsys.readouterr()
  return code, captured.out + captured.err


def test_torchvision_weights_give_the_direct_features(tmp_path, image01, vgg_features, capsys):
  state = _torchvision_state_dict()
  source, out = tmp_path / "vgg19_torchvision.npz", tmp_path / "vgg19.npz"
  np.savez(source, **state)
  code, text = _run_tool(["--from", source, "--out", out], capsys)
  assert code == 0, text
  with np.load(out) as converted:
    assert sorted(converted.files) == sorted(
        f"features.{i}.{leaf}" for i, _, _ in _ALL_CONVS[:_USED] for leaf in ("weight", "bias"))
  # The direct path: torchvision's arrays, OIHW -> HWIO by hand.
  direct = {f"features_{i}": {"kernel": state[f"features.{i}.weight"].transpose(2, 3, 1, 0),
                              "bias": state[f"features.{i}.bias"]}
            for i, _, _ in _ALL_CONVS[:_USED]}
  loaded = vgg19_weights.load_vgg19_params(out)
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, loaded, direct))
  np.testing.assert_array_equal(vgg_features(loaded, image01), vgg_features(direct, image01))


def test_keras_weights_give_keras_function(tmp_path, image01, vgg_features, capsys):
  weights = _keras_weights()
  source, out = tmp_path / "vgg19_keras.h5", tmp_path / "vgg19.npz"
  _write_keras_legacy(source, weights)
  code, text = _run_tool(["--from", source, "--out", out], capsys)
  assert code == 0, text
  params = vgg19_weights.load_vgg19_params(out)

  # Keras' preprocessing: 0-255 values, RGB -> BGR, caffe mean subtracted.
  u = image01 * np.float32(255)
  v = u[..., ::-1] - _CAFFE_MEAN_BGR
  kernel0, bias0 = weights[0]
  ours_relu1_1 = np.asarray(jax.jit(lambda p, x: VGG19(last="relu1_1").apply({"params": p}, x))(
      {"features_0": params["features_0"]}, image01))
  keras_relu1_1 = np.asarray(_conv(v, kernel0, bias0))
  scale = np.abs(keras_relu1_1).max()
  # Inside the image the function is Keras' own, up to the rounding of the preprocessing folded
  # into conv1_1 (measured at most 3.2e-7 of the scale on six draws of weights and image) and,
  # below, of 13 float32 layers (at most 9.4e-7 of relu5_1's largest).
  np.testing.assert_allclose(ours_relu1_1[:, 1:-1, 1:-1], keras_relu1_1[:, 1:-1, 1:-1],
                             atol=2e-5 * scale, rtol=0)
  # At the border our conv pads with torchvision's mean where Keras pads with caffe's: Keras'
  # function with conv1_1's input padded by d = 255 mean - caffe mean, down to relu5_1.
  d_bgr = (255 * _TORCH_MEAN - _CAFFE_MEAN_BGR[::-1].astype(np.float64))[::-1].astype(np.float32)
  want = np.asarray(_keras_relu5_1(v, d_bgr, weights[:_USED]))
  got = np.asarray(vgg_features(params, image01))
  np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max(), rtol=0)
  # ... which moves relu1_1 at the border by less than the padded taps times half a grey level.
  border = np.abs(ours_relu1_1 - keras_relu1_1).max()
  assert 0 < border <= 0.5 * np.abs(kernel0).sum(axis=(0, 1, 2)).max()


def test_keras3_layout_converts_like_the_legacy_layout(tmp_path, capsys):
  weights = _keras_weights()
  _write_keras_legacy(tmp_path / "legacy.h5", weights)
  _write_keras3(tmp_path / "vgg19.weights.h5", weights)
  legacy = vgg19_weights.read_weights(tmp_path / "legacy.h5")
  keras3 = vgg19_weights.read_weights(tmp_path / "vgg19.weights.h5")
  assert legacy.keys() == keras3.keys()
  for key in legacy:
    np.testing.assert_array_equal(legacy[key], keras3[key])


def test_load_vgg19_params_reads_the_default_location(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert vgg19_weights.default_weights_path() == tmp_path / "ttsr_jax" / "vgg19.npz"
  with pytest.raises(FileNotFoundError, match="python -m ttsr_jax.tools.vgg19"):
    vgg19_weights.load_vgg19_params()
  vgg19_weights.default_weights_path().parent.mkdir(parents=True)
  np.savez(vgg19_weights.default_weights_path(), **_torchvision_state_dict())
  params = vgg19_weights.load_vgg19_params()
  assert set(params) == {f"features_{i}" for i, _, _ in _ALL_CONVS[:_USED]}
  assert params["features_28"]["kernel"].shape == (3, 3, 512, 512)


def test_bad_sources_are_one_line_errors(tmp_path, capsys):
  not_vgg = tmp_path / "not_vgg.npz"
  np.savez(not_vgg, **{"conv.weight": np.zeros((1, 1, 1, 1), np.float32)})
  wrong_shape = dict(_torchvision_state_dict())
  wrong_shape["features.5.weight"] = np.zeros((128, 32, 3, 3), np.float32)
  np.savez(tmp_path / "wrong_shape.npz", **wrong_shape)
  not_h5 = tmp_path / "not.h5"
  not_h5.write_text("text")
  keras_wrong_shape = _keras_weights()
  keras_wrong_shape[1] = (np.zeros((3, 3, 64, 32), np.float32), np.zeros(64, np.float32))
  _write_keras_legacy(tmp_path / "wrong_shape.h5", keras_wrong_shape)
  with h5py.File(tmp_path / "one_layer.h5", "w") as f:
    f.attrs["layer_names"] = [b"block1_conv1"]
    f.create_group("block1_conv1").attrs["weight_names"] = np.array([], np.float64)
  cases = {
      tmp_path / "missing.pth": "missing.pth: VGG19 weight file not found",
      not_vgg: "not a torchvision VGG19 state dict: missing features.0.weight",
      tmp_path / "wrong_shape.npz": "features.5.weight: shape (128, 32, 3, 3) in the file, the "
                                    "model expects (128, 64, 3, 3)",
      tmp_path / "wrong_shape.h5": "wrong_shape.h5: layer block1_conv2 holds [(3, 3, 64, 32), "
                                   "(64,)], expected a (3, 3, 64, 64) kernel and a (64,) bias",
      not_h5: "not.h5: not a readable HDF5 file",
      tmp_path / "one_layer.h5": "one_layer.h5: no layer 'block1_conv2'; expected Keras' VGG19 "
                                 "layer names",
  }
  for source, message in cases.items():
    code, text = _run_tool(["--from", source, "--out", tmp_path / "out.npz"], capsys)
    assert code == 1 and text.count("\n") == 1 and message in text, (source, text)
  assert not (tmp_path / "out.npz").exists()


def test_without_a_source_it_says_where_to_get_the_weights(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(vgg19, "_have_torch", lambda: False)
  code, text = _run_tool(["--out", tmp_path / "out.npz"], capsys)
  assert code == 1 and "needs torch" in text and vgg19.TORCHVISION_URL in text
  assert vgg19.KERAS_URL in text and text.count("\n") == 1

  def no_network(*args, **kwargs):
    raise urllib.error.URLError("no network")

  monkeypatch.setattr(vgg19, "_have_torch", lambda: True)
  monkeypatch.setattr(vgg19.urllib.request, "urlopen", no_network)
  code, text = _run_tool(["--out", tmp_path / "out.npz"], capsys)
  assert code == 1 and text.count("\n") == 1
  assert f"could not download {vgg19.TORCHVISION_URL} (no network)" in text
  assert "--from FILE" in text

"""ImageNet VGG19 weights for the LTE initialisation and the perceptual loss: reading the
published files and loading them as parameters of `models.vgg.VGG19`.

The reference takes both from torchvision's `vgg19(pretrained=True)` (its `model/LTE.py` and
`loss/loss.py`). `python -m ttsr_jax.tools.vgg19` writes the file that training reads, with this
module.

The file: an `.npz` in torchvision's own layout, `features.{k}.weight` (OIHW, float32) and
`features.{k}.bias` for the 13 convs conv1_1 ... conv5_1 (k = 0, 2, 5, ..., 28): the part of VGG19
the model uses (conv5_2 .. conv5_4 and the classifier are dropped). Keeping torchvision's keys lets
PyTorch load the file too (`vgg19().load_state_dict(..., strict=False)`); `load_vgg19_params`
turns it into the parameters of our `VGG19` module (`features_{k}`, HWIO), whose names the LTE
shares.

Readable sources:
  * torchvision's `vgg19-dcbb9e9d.pth` (read with torch), or an `.npz` of the same keys;
  * Keras' VGG19 weights `.h5`, read with h5py: the published
    `vgg19_weights_tf_dim_ordering_tf_kernels[_notop].h5` (layer groups `block1_conv1` ...), a
    whole-model `.h5`, or a Keras 3 `save_weights` file (`layers/conv2d[_n]/vars/{0,1}`). Keras'
    VGG19 expects caffe preprocessing; `fold_caffe_preprocessing` rewrites conv1_1 so that our
    network computes the same function.
The default location is `default_weights_path()`, `~/.cache/ttsr_jax/vgg19.npz`.
"""


import os
import pathlib
from typing import Any, Mapping, Optional, Union

import jax.numpy as jnp
import numpy as np

from ttsr_jax import convert
from ttsr_jax.models.vgg import MEAN_SHIFT_BIAS, MEAN_SHIFT_SCALE, VGG19, VGG19_LAYERS

Params = dict[str, Any]
PathLike = Union[str, os.PathLike]

# Keras' `imagenet_utils.preprocess_input(mode='caffe')`: BGR order, this mean subtracted from
# 0-255 values, no scaling.
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])
_KERAS_H5_SUFFIXES = (".h5", ".hdf5")


def _conv_table() -> tuple[tuple[str, int, int, int], ...]:
  """(Keras layer name, torchvision index, input channels, output channels), conv1_1 .. conv5_1."""
  convs, in_channels = [], 3
  for layer in VGG19_LAYERS:
    if layer != "pool":
      name, index, channels = layer
      convs.append((name.replace("relu", "block").replace("_", "_conv"), index, in_channels,
                    channels))
      in_channels = channels
  return tuple(convs)


_CONVS = _conv_table()


class VGG19WeightsError(Exception):
  """The weights cannot be obtained (no network, no torch to read them, a corrupt download)."""


def default_weights_path() -> pathlib.Path:
  """Where the converted weights live unless a config names a file: ~/.cache/ttsr_jax/vgg19.npz
  ($XDG_CACHE_HOME instead of ~/.cache when set)."""
  cache = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(cache) / "ttsr_jax" / "vgg19.npz"


def fold_caffe_preprocessing(kernel_bgr: np.ndarray, bias: np.ndarray
                             ) -> tuple[np.ndarray, np.ndarray]:
  """Rewrites Keras' conv1_1 (HWIO, input channels BGR) for our input convention.

  Keras computes conv1_1 on v = u[BGR] - m (u the 0-255 RGB pixels, m = CAFFE_MEAN_BGR); our VGG19
  computes it on y = x * s + t (x = u / 255 RGB, s = MEAN_SHIFT_SCALE = 1/std, t = MEAN_SHIFT_BIAS
  = -mean/std). Per RGB channel c, x = (y - t) / s, so

      v_c = 255 x_c - m_c = a_c y_c + d_c,   a_c = 255 / s_c (= 255 std_c),
                                             d_c = -255 t_c / s_c - m_c (= 255 mean_c - m_c).

  With K the kernel reordered to RGB inputs, conv(v, K) + b = conv(y, a K) + (b + sum_{h,w,c}
  K[h,w,c,:] d_c): kernel scaled per input channel by a, the constant d folded into the bias.
  This is exact wherever the 3x3 window lies inside the image. At the one-pixel border it is not:
  Keras zero-pads v whereas our conv zero-pads y, i.e. pads v with d, which is within half a grey
  level of 0 (d = (-0.005, -0.499, -0.409) in RGB), because torchvision's mean differs from
  caffe's. No kernel can undo a different padding value, so border pixels of conv1_1 differ by
  the padded taps' sum of K * d.

  Returns:
    kernel (HWIO, RGB inputs) and bias, float32 (computed in float64).
  """
  scale = MEAN_SHIFT_SCALE.astype(np.float64)
  shift = MEAN_SHIFT_BIAS.astype(np.float64)
  a = 255.0 / scale
  d = -255.0 * shift / scale - CAFFE_MEAN_BGR[::-1]
  kernel_rgb = np.asarray(kernel_bgr, np.float64)[:, :, ::-1, :]
  folded_bias = np.asarray(bias, np.float64) + np.einsum("hwco,c->o", kernel_rgb, d)
  return (kernel_rgb * a[None, None, :, None]).astype(np.float32), folded_bias.astype(np.float32)


def torchvision_subset(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The conv1_1 ... conv5_1 entries of a torchvision VGG19 state dict as float32; the other
  entries (conv5_2 .. conv5_4, classifier) are dropped."""
  keys = [f"features.{index}.{leaf}" for _, index, _, _ in _CONVS for leaf in ("weight", "bias")]
  missing = [k for k in keys if k not in state_dict]
  if missing:
    raise convert.StateDictError(
        f"not a torchvision VGG19 state dict: missing {', '.join(missing[:3])}"
        + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else "")
        + f"; found {', '.join(sorted(state_dict)[:3])} ...")
  return {k: np.asarray(state_dict[k], np.float32) for k in keys}


def _keras_layer_arrays(root, path: pathlib.Path) -> list[list[np.ndarray]]:
  """The arrays of the 13 convs conv1_1 ... conv5_1 in a Keras weights file, in order."""
  if "layer_names" in root.attrs:  # Keras 2 / legacy layout: a group per layer name
    layers = []
    for name, _, _, _ in _CONVS:
      if name not in root:
        raise convert.StateDictError(f"{path}: no layer {name!r}; expected Keras' VGG19 layer "
                                     "names block1_conv1 ... block5_conv1")
      group = root[name]
      names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs["weight_names"]]
      layers.append([group[n][()] for n in names])
    return layers
  if "layers" in root:  # Keras 3 `save_weights`: layers named after their class, in build order
    convs = sorted((n for n in root["layers"] if n == "conv2d" or n.startswith("conv2d_")),
                   key=lambda n: int(n[len("conv2d_"):] or 0))
    if len(convs) < len(_CONVS):
      raise convert.StateDictError(f"{path}: {len(convs)} conv layers, expected VGG19's 16 "
                                   "(at least conv1_1 ... conv5_1)")
    return [[v[()] for _, v in sorted(root["layers"][n]["vars"].items(), key=lambda kv: int(kv[0]))]
            for n in convs[:len(_CONVS)]]
  raise convert.StateDictError(f"{path}: not a Keras weights file (no 'layer_names' attribute "
                               "and no 'layers' group)")


def keras_state_dict(path: PathLike) -> dict[str, np.ndarray]:
  """Reads Keras' VGG19 weights (`.h5`) as a torchvision-layout subset (see module docstring),
  with the caffe preprocessing folded into conv1_1."""
  path = pathlib.Path(path)
  try:
    import h5py  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"{path}: reading Keras .h5 files needs h5py (pip install h5py)") from e
  try:
    with h5py.File(path, "r") as h5:
      root = h5["model_weights"] if "model_weights" in h5 else h5  # whole-model saves
      layers = _keras_layer_arrays(root, path)
  except OSError as e:
    raise convert.StateDictError(f"{path}: not a readable HDF5 file ({e})") from None
  state = {}
  for (name, index, cin, cout), arrays in zip(_CONVS, layers):
    kernels = [a for a in arrays if a.ndim == 4]
    biases = [a for a in arrays if a.ndim == 1]
    if len(kernels) != 1 or len(biases) != 1 or kernels[0].shape != (3, 3, cin, cout):
      raise convert.StateDictError(
          f"{path}: layer {name} holds {[a.shape for a in arrays]}, expected a (3, 3, {cin}, "
          f"{cout}) kernel and a ({cout},) bias")
    kernel, bias = kernels[0], biases[0]
    if index == 0:
      kernel, bias = fold_caffe_preprocessing(kernel, bias)
    state[f"features.{index}.weight"] = np.asarray(kernel, np.float32).transpose(3, 2, 0, 1)
    state[f"features.{index}.bias"] = np.asarray(bias, np.float32)
  return state


def read_weights(path: PathLike) -> dict[str, np.ndarray]:
  """Any accepted VGG19 weight file (torchvision `.pth`/`.pt`/`.npz`, Keras `.h5`/`.hdf5`) as a
  torchvision-layout subset (the output format of this tool)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: VGG19 weight file not found")
  if path.suffix in _KERAS_H5_SUFFIXES:
    return keras_state_dict(path)
  return torchvision_subset(convert.load_state_dict(path))


def to_params(state_dict: Mapping[str, np.ndarray]) -> Params:
  """`VGG19` parameters from a torchvision-layout state dict (checks every key and shape)."""
  target = convert.abstract_params(VGG19(), jnp.zeros((1, 16, 16, 3)))
  return convert.import_state_dict(state_dict, target)


def load_vgg19_params(path: Optional[PathLike] = None) -> Params:
  """Parameters of `models.vgg.VGG19` (`features_{k}`: kernel HWIO, bias) from a VGG19 weight file.

  Args:
    path: this tool's `.npz`, or any file it accepts as `--from`; None reads
      `default_weights_path()`.

  Raises:
    FileNotFoundError: no such file (the message says how to create the default one).
    convert.StateDictError: the file is not VGG19 weights or has the wrong shapes.
  """
  path = default_weights_path() if path is None else pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: VGG19 weights not found; create them with "
                            "`python -m ttsr_jax.tools.vgg19` (see docs/inference.md)")
  return to_params(read_weights(path))



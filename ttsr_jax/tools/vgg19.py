"""Converts published ImageNet VGG19 weights into the file training reads.

  python -m ttsr_jax.tools.vgg19 [--from FILE] [--out PATH]

`--from`: torchvision's `vgg19-dcbb9e9d.pth` (needs torch) or an `.npz` of the same keys, or
Keras' VGG19 `.h5` (needs h5py); `ttsr_jax.vgg19_weights` describes each and the output file.
Without `--from`, torchvision's file is downloaded (needs a network, and torch to read it).
The default output is `vgg19_weights.default_weights_path()`, `~/.cache/ttsr_jax/vgg19.npz`.
"""

import argparse
import hashlib
import importlib.util
import os
import pathlib
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from typing import Optional, Union

import numpy as np

from ttsr_jax import convert
from ttsr_jax.vgg19_weights import VGG19WeightsError, default_weights_path, read_weights
from ttsr_jax.vgg19_weights import to_params

PathLike = Union[str, os.PathLike]

TORCHVISION_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
KERAS_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/vgg19/"
             "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5")
# torchvision names its files after the first hex digits of their SHA-256.
_TORCHVISION_SHA256_PREFIX = "dcbb9e9d"


def _have_torch() -> bool:
  return importlib.util.find_spec("torch") is not None


def download_torchvision(directory: PathLike) -> pathlib.Path:
  """Downloads torchvision's VGG19 file into `directory` and checks its SHA-256 prefix."""
  where = (f"download {TORCHVISION_URL} where a network is available (or Keras' {KERAS_URL}, "
           "which needs only h5py) and run: python -m ttsr_jax.tools.vgg19 --from FILE")
  # Checked first: the file is 548 MB and useless here without torch.
  if not _have_torch():
    raise VGG19WeightsError(f"reading torchvision's .pth needs torch, which is not installed; "
                            f"pip install torch, or {where}")
  target = pathlib.Path(directory) / TORCHVISION_URL.rsplit("/", 1)[1]
  try:
    with urllib.request.urlopen(TORCHVISION_URL, timeout=60) as response, open(target, "wb") as f:
      shutil.copyfileobj(response, f)
  except (urllib.error.URLError, OSError) as e:
    raise VGG19WeightsError(f"could not download {TORCHVISION_URL} "
                            f"({getattr(e, 'reason', e)}); {where}") from None
  digest = hashlib.sha256(target.read_bytes()).hexdigest()
  if not digest.startswith(_TORCHVISION_SHA256_PREFIX):
    raise VGG19WeightsError(f"{TORCHVISION_URL}: downloaded file has SHA-256 {digest[:16]}..., "
                            f"expected {_TORCHVISION_SHA256_PREFIX}...; {where}")
  return target


def main(argv: Optional[list[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m ttsr_jax.tools.vgg19",
      description="Converts ImageNet VGG19 weights (torchvision or Keras) for ttsr_jax.")
  parser.add_argument("--from", dest="source", type=pathlib.Path, default=None,
                      help="torchvision .pth/.pt/.npz or Keras .h5/.hdf5 (default: download "
                      "torchvision's file)")
  parser.add_argument("--out", type=pathlib.Path, default=default_weights_path(),
                      help="output .npz (default: %(default)s)")
  args = parser.parse_args(argv)
  try:
    with tempfile.TemporaryDirectory() as scratch:
      source = args.source or download_torchvision(scratch)
      state = read_weights(source)
    to_params(state)  # shape check before anything is written
  except (VGG19WeightsError, convert.StateDictError, FileNotFoundError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  args.out.parent.mkdir(parents=True, exist_ok=True)
  with open(args.out, "wb") as f:  # np.savez on a name would append '.npz' to other suffixes
    np.savez(f, **state)
  print(f"wrote {args.out}: VGG19 conv1_1 ... conv5_1 ({len(state)} arrays) from {source}")
  return 0


if __name__ == "__main__":
  sys.exit(main())

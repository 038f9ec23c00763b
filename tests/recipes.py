"""The parity README's recipes for weights too large to store (NumPy legacy RandomState streams)."""

import numpy as np

from ttsr_jax.models.vgg import VGG19_LAYERS

D_KEYS_SHAPES = (
    [(f"conv{i}", (o, c, 3, 3)) for i, (o, c) in enumerate(
        [(32, 3), (32, 32), (64, 32), (64, 64), (128, 64), (128, 128), (256, 128), (256, 256),
         (512, 256), (512, 512)], start=1)]
    + [("fc1", (1024, 12800)), ("fc2", (1, 1024))])


def discriminator_state_dict(d_seed: int = 5000) -> dict[str, np.ndarray]:
  """Key i of D's state dict uses RandomState(d_seed + i): He-normal weights, U(-0.05, 0.05)
  biases."""
  out = {}
  i = 0
  for name, shape in D_KEYS_SHAPES:
    gain = 2.0 if name.startswith("conv") else 1.0
    fan_in = int(np.prod(shape[1:]))
    w = np.random.RandomState(d_seed + i).standard_normal(shape) * np.sqrt(gain / fan_in)
    out[f"{name}.weight"] = w.astype(np.float32)
    b = np.random.RandomState(d_seed + i + 1).uniform(-0.05, 0.05, size=shape[0])
    out[f"{name}.bias"] = b.astype(np.float32)
    i += 2
  return out


def vgg19_state_dict(vgg_seed: int = 1000, prefix: str = "slice1.") -> dict[str, np.ndarray]:
  """The stand-in VGG19 `features` convs (index k uses seeds vgg_seed + 2k and + 2k + 1)."""
  out = {}
  in_channels = 3
  for layer in VGG19_LAYERS:
    if layer == "pool":
      continue
    _, k, channels = layer
    w = np.random.RandomState(vgg_seed + 2 * k).standard_normal((channels, in_channels, 3, 3))
    out[f"{prefix}{k}.weight"] = (w * np.sqrt(2.0 / (9 * in_channels))).astype(np.float32)
    b = np.random.RandomState(vgg_seed + 2 * k + 1).uniform(-0.05, 0.05, size=channels)
    out[f"{prefix}{k}.bias"] = b.astype(np.float32)
    in_channels = channels
  return out

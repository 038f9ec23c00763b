"""Convolution and linear layers with PyTorch's default initialisation and explicit padding.

Flax's `nn.Conv` derives the bias init without the fan-in and pads stride-2 convs asymmetrically
under 'SAME'; the reference's layers need U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for kernel and bias
and symmetric padding, so we write the two layers out. Parameters stay float32; `dtype` is the
compute dtype (bfloat16 for the memory knob), and float32 runs at full precision because TF32
passes on GPUs flip the search's argmax.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = jnp.dtype


def _torch_uniform(fan_in: int):
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _precision(dtype) -> jax.lax.Precision:
  return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else jax.lax.Precision.DEFAULT


class Conv2d(nn.Module):
  """PyTorch `nn.Conv2d(in, features, kernel_size, stride, padding=kernel_size // 2)` in NHWC."""

  features: int
  kernel_size: int = 3
  stride: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    in_features = x.shape[-1]
    fan_in = in_features * self.kernel_size * self.kernel_size
    kernel = self.param("kernel", _torch_uniform(fan_in),
                        (self.kernel_size, self.kernel_size, in_features, self.features))
    bias = self.param("bias", _torch_uniform(fan_in), (self.features,))
    pad = self.kernel_size // 2
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype),
        window_strides=(self.stride, self.stride),
        padding=((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=_precision(self.dtype))
    return y + bias.astype(self.dtype)


class Linear(nn.Module):
  """PyTorch `nn.Linear(in, features)`; the kernel is stored (in, out)."""

  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    fan_in = x.shape[-1]
    kernel = self.param("kernel", _torch_uniform(fan_in), (fan_in, self.features))
    bias = self.param("bias", _torch_uniform(fan_in), (self.features,))
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype), precision=_precision(self.dtype))
    return y + bias.astype(self.dtype)

"""Convolution and linear layers with PyTorch's default initialisation and explicit padding.

Flax's `nn.Conv` derives the bias init without the fan-in and pads stride-2 convs asymmetrically
under 'SAME'; the reference's layers need U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for kernel and bias
and symmetric padding, so we write the two layers out. Parameters stay float32; `dtype` is the
compute dtype (bfloat16 under the 'fast' policy, models/precision.py), and float32 runs at
`Precision.HIGHEST` because TF32 passes on GPUs flip the search's argmax.
"""

import contextlib
import contextvars
import functools
import math
from typing import Iterator

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


_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def xla_conv2d(x: jnp.ndarray, kernel: jnp.ndarray, stride: int, padding: int,
               precision: jax.lax.Precision) -> jnp.ndarray:
  """A square NHWC/HWIO convolution with XLA's own gradients."""
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((padding, padding),) * 2,
                                      dimension_numbers=_DIMENSIONS, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv2d(x: jnp.ndarray, kernel: jnp.ndarray, stride: int, padding: int,
           precision: jax.lax.Precision) -> jnp.ndarray:
  """A square NHWC/HWIO convolution whose backward pass is written as forward convolutions
  and matrix products.

  XLA:CPU runs its own input- and kernel-gradient convolutions many times slower inside a loop
  body (lax.scan, as in gradient accumulation) than outside (bench/conv_backward.py measures it;
  docs/benchmarks.md), while forward convolutions and dots keep their speed. Here the input
  gradient is a forward convolution of the output gradient with the flipped, transposed kernel
  (one per phase of the input grid for strided convolutions), and the kernel gradient one
  matrix product per kernel row (per tap when strided). Both are written with `conv2d` and
  dots, so the second derivative (the WGAN-GP penalty) stays fast too.
  """
  return xla_conv2d(x, kernel, stride, padding, precision)


def _conv2d_fwd(x, kernel, stride, padding, precision):
  return xla_conv2d(x, kernel, stride, padding, precision), (x, kernel)


def _conv2d_bwd(stride, padding, precision, residuals, dy):
  x, kernel = residuals
  return (_input_gradient(dy, kernel, x.shape, stride, padding, precision),
          _kernel_gradient(x, dy, kernel.shape[0], stride, padding, precision))


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def _input_gradient(dy, kernel, x_shape, stride, padding, precision):
  if stride > 1:
    return _strided_input_gradient(dy, kernel, x_shape, stride, padding, precision)
  k = kernel.shape[0]
  edge = k - 1 - padding
  padded = jax.lax.pad(dy, jnp.zeros((), dy.dtype),
                       ((0, 0, 0), (edge, edge, 0), (edge, edge, 0), (0, 0, 0)))
  flipped = jnp.flip(kernel, (0, 1)).swapaxes(2, 3)
  return conv2d(padded, flipped, 1, 0, precision)


def _phase_taps(phase, k, stride, padding):
  """For the input rows t = stride * a + phase: (first kernel row that reaches them, how many
  kernel rows do (every stride-th), offset c such that kernel row first + stride * m reads
  output row a + c - m)."""
  first = (phase + padding) % stride
  return first, len(range(first, k, stride)), (phase + padding - first) // stride


def _strided_input_gradient(dy, kernel, x_shape, stride, padding, precision):
  """The input gradient of a strided convolution as stride^2 stride-1 convolutions, one per
  phase of the input grid (rows and columns modulo stride), each with the kernel taps that reach
  that phase; interleaved afterwards. Convolving the zero-interleaved output gradient instead
  would multiply stride^2 times as many values, most of them zeros. Every phase's taps are
  zero-padded to one square size, so that `conv2d`'s own backward pass (square kernels) gives
  the second derivative."""
  n, out_h, out_w, _ = dy.shape
  _, h, w, c = x_shape
  k = kernel.shape[0]
  size = -(-k // stride)  # the most taps any phase has along one axis
  rows, cols = -(-h // stride), -(-w // stride)  # phase grids, padded to equal sizes
  phases = []
  for phase_h in range(stride):
    first_h, taps_h, offset_h = _phase_taps(phase_h, k, stride, padding)
    for phase_w in range(stride):
      first_w, taps_w, offset_w = _phase_taps(phase_w, k, stride, padding)
      taps = jnp.flip(kernel[first_h::stride, first_w::stride], (0, 1)).swapaxes(2, 3)
      taps = jnp.pad(taps, ((0, size - taps_h), (0, size - taps_w), (0, 0), (0, 0)))
      # Negative padding crops output rows that no input row of this phase reads.
      window = jax.lax.pad(
          dy, jnp.zeros((), dy.dtype),
          ((0, 0, 0), (taps_h - 1 - offset_h, rows + offset_h - out_h + size - taps_h, 0),
           (taps_w - 1 - offset_w, cols + offset_w - out_w + size - taps_w, 0), (0, 0, 0)))
      phases.append(conv2d(window, taps, 1, 0, precision))
  interleaved = jnp.stack(phases).reshape(stride, stride, n, rows, cols, c)
  interleaved = interleaved.transpose(2, 3, 0, 4, 1, 5).reshape(n, rows * stride, cols * stride, c)
  return interleaved[:, :h, :w]


def _kernel_gradient(x, dy, k, stride, padding, precision):
  n, out_h, out_w, out_c = dy.shape
  c = x.shape[-1]
  padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  if stride > 1:
    return _strided_kernel_gradient(padded, dy, k, stride, precision)
  padded_w = padded.shape[2]
  span_h, span_w = stride * (out_h - 1) + 1, stride * (out_w - 1) + 1
  # dy on the padded input's grid, once per kernel column j (shifted right by j), side by side:
  # (N, span_h, padded_w, k * out_c). Built from dy, so it is made when dy arrives, not kept
  # from the forward pass.
  zero = jnp.zeros((), dy.dtype)
  shifted = jnp.concatenate(
      [jax.lax.pad(dy, zero, ((0, 0, 0), (0, 0, stride - 1),
                              (j, padded_w - span_w - j, stride - 1), (0, 0, 0)))
       for j in range(k)], axis=-1)
  shifted = shifted.reshape(-1, k * out_c)
  rows = [jax.lax.dot_general(padded[:, i:i + span_h].reshape(-1, c), shifted,
                              (((0,), (0,)), ((), ())), precision=precision)
          for i in range(k)]  # each (C, k * out_c)
  return jnp.stack(rows).reshape(k, c, k, out_c).transpose(0, 2, 1, 3)


def _strided_kernel_gradient(padded, dy, k, stride, precision):
  """One matrix product per kernel tap, of the strided view of the padded input that tap reads
  with dy: the stride-1 form would spread dy over the input grid with stride^2 - 1 zeros per
  value."""
  n, out_h, out_w, out_c = dy.shape
  c = padded.shape[-1]
  span_h, span_w = stride * (out_h - 1) + 1, stride * (out_w - 1) + 1
  flat_dy = dy.reshape(-1, out_c)
  taps = [jax.lax.dot_general(
      padded[:, i:i + span_h:stride, j:j + span_w:stride].reshape(-1, c), flat_dy,
      (((0,), (0,)), ((), ())), precision=precision) for i in range(k) for j in range(k)]
  return jnp.stack(taps).reshape(k, k, c, out_c)


_IN_LOOP_BODY = contextvars.ContextVar("in_loop_body", default=False)


@contextlib.contextmanager
def loop_body() -> Iterator[None]:
  """Marks modules applied (traced) inside it as running in the body of a loop that is
  differentiated (`lax.scan`, `lax.map`): on XLA:CPU their convolutions then take `conv2d`'s
  backward pass. The values are the same either way; only the speed differs. It is read while
  tracing: a function that JAX traced and cached outside it (a jitted function called again)
  keeps the convolutions of that trace."""
  token = _IN_LOOP_BODY.set(True)
  try:
    yield
  finally:
    _IN_LOOP_BODY.reset(token)


def _convolution():
  """The convolution to trace here: `conv2d` inside loop bodies on XLA:CPU, XLA's otherwise."""
  return conv2d if _IN_LOOP_BODY.get() and jax.default_backend() == "cpu" else xla_conv2d


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
    y = _convolution()(x.astype(self.dtype), kernel.astype(self.dtype), self.stride,
             self.kernel_size // 2, _precision(self.dtype))
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

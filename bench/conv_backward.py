"""Prints the time of a 3x3 convolution's forward and gradients, outside and inside a loop.

  python -m bench.conv_backward [--size 160] [--channels 64] [--samples 3]

XLA:CPU runs its own input- and kernel-gradient convolutions much slower inside a loop body
(`lax.map`/`lax.scan`, e.g. gradient accumulation) than outside; `layers.conv2d`'s custom VJP
(forward convolutions and matmuls) keeps its speed there. One image per loop iteration, as in
the microbatched train step; the time is per image.
"""

import argparse
import time

import jax

from ttsr_jax.models import layers

HIGHEST = jax.lax.Precision.HIGHEST


def _gradient(conv, wrt: int):
  def fn(x, kernel, dy):
    return jax.vjp(lambda *a: conv(*a, 1, 1, HIGHEST), x, kernel)[1](dy)[wrt]
  return fn


def _time_per_sample(fn, x, kernel, dy) -> tuple[float, float]:
  """(outside a loop, inside lax.map), seconds per sample."""
  samples = x.shape[0]
  outside = jax.jit(lambda x, k, dy: [fn(x[i], k, dy[i]) for i in range(samples)])
  inside = jax.jit(lambda x, k, dy: jax.lax.map(lambda a: fn(a[0], k, a[1]), (x, dy)))
  result = []
  for f in (outside, inside):
    jax.block_until_ready(f(x, kernel, dy))
    best = float("inf")
    for _ in range(3):
      start = time.perf_counter()
      jax.block_until_ready(f(x, kernel, dy))
      best = min(best, time.perf_counter() - start)
    result.append(best / samples)
  return result[0], result[1]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", type=int, default=160)
  parser.add_argument("--channels", type=int, default=64)
  parser.add_argument("--samples", type=int, default=3)
  args = parser.parse_args()
  keys = jax.random.split(jax.random.key(0), 3)
  shape = (args.samples, 1, args.size, args.size, args.channels)
  x, dy = jax.random.normal(keys[0], shape), jax.random.normal(keys[1], shape)
  kernel = 0.05 * jax.random.normal(keys[2], (3, 3, args.channels, args.channels))
  xla = layers.xla_conv2d
  cases = {
      "forward": lambda x, k, dy: xla(x, k, 1, 1, HIGHEST),
      "input gradient, XLA": _gradient(xla, 0),
      "kernel gradient, XLA": _gradient(xla, 1),
      "input gradient, layers.conv2d": _gradient(layers.conv2d, 0),
      "kernel gradient, layers.conv2d": _gradient(layers.conv2d, 1),
  }
  print(f"{jax.devices()[0].device_kind}, 1x{args.size}x{args.size}x{args.channels} per sample, "
        "ms per sample")
  print(f"{'':32} {'outside a loop':>15} {'inside lax.map':>15}")
  for name, fn in cases.items():
    outside, inside = _time_per_sample(fn, x, kernel, dy)
    print(f"{name:32} {outside * 1e3:15.1f} {inside * 1e3:15.1f}", flush=True)


if __name__ == "__main__":
  main()

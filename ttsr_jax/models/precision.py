"""Precision policies: the dtype each network computes in (`config.model.precision`).

Parameters, optimiser states, gradients, loss reductions and every model output (sr, S, T, the
discriminator's scores, VGG features) stay float32 under every policy; a policy only sets the
dtype of the activations and convolutions inside each network (layers.Conv2d casts its float32
parameters to it). float32 convolutions run at `Precision.HIGHEST` (layers.py), and the
relevance search (normalisation, dot products, argmax, S) always computes in float32 `HIGHEST`.

- 'exact': everything float32, the reference's numbers (the parity tests).
- 'fast': bfloat16 convolutions in MainNet, the perceptual VGG19 and the discriminator. The LTE
  stays float32: it feeds the search, and in bfloat16 it changes some argmax positions of the
  parity cases and moves sr several times as much (docs/benchmarks.md, "Precision policies").
"""

import jax.numpy as jnp

NETWORKS = ("main_net", "lte", "vgg", "discriminator")

POLICIES = {
    "exact": dict(main_net=jnp.float32, lte=jnp.float32, vgg=jnp.float32,
                  discriminator=jnp.float32),
    "fast": dict(main_net=jnp.bfloat16, lte=jnp.float32, vgg=jnp.bfloat16,
                 discriminator=jnp.bfloat16),
}


def check(precision: str) -> None:
  """Raises ValueError, naming the config key, for a policy that does not exist."""
  if precision not in POLICIES:
    raise ValueError(f"config.model.precision {precision!r}: expected one of "
                     f"{', '.join(repr(p) for p in POLICIES)}")


def compute_dtype(precision: str, network: str) -> jnp.dtype:
  """The dtype `network` (one of NETWORKS) computes in under `precision`."""
  check(precision)
  return jnp.dtype(POLICIES[precision][network])

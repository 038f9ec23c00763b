"""Generator and discriminator losses (reference `loss/loss.py`), NHWC, images in [-1, 1]."""

from typing import Any, Callable

import jax
import jax.numpy as jnp

from ttsr_jax.models.ttsr import to_unit_range
from ttsr_jax.ops.bicubic import upsample_bicubic

Params = Any


def reconstruction_loss(sr: jnp.ndarray, hr: jnp.ndarray) -> jnp.ndarray:
  """L1 over all elements (nn.L1Loss)."""
  return jnp.mean(jnp.abs(sr - hr))


def perceptual_loss(vgg_apply: Callable, sr: jnp.ndarray, hr: jnp.ndarray) -> jnp.ndarray:
  """MSE of frozen VGG19 relu5_1 features; `vgg_apply` maps [0, 1] images to features."""
  target = jax.lax.stop_gradient(vgg_apply(to_unit_range(hr)))
  return jnp.mean((vgg_apply(to_unit_range(sr)) - target) ** 2)


def texture_loss(lte_copy_apply: Callable, sr: jnp.ndarray, s: jnp.ndarray,
                 textures: tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray],
                 use_s: bool = False, loss_type: str = "l2") -> jnp.ndarray:
  """Transferal perceptual loss: LTE-copy features of sr against T_lv3, T_lv2, T_lv1, averaged.

  `lte_copy_apply` must apply the current LTE with stop-gradient parameters: gradient reaches
  MainNet through sr and the LTE only through T (and S when gated), never through the copy.
  """
  if loss_type not in ("l1", "l2"):
    raise ValueError(f"tpl_type {loss_type!r}: expected 'l1' or 'l2'")
  sr_lv1, sr_lv2, sr_lv3 = lte_copy_apply(to_unit_range(sr))
  t_lv3, t_lv2, t_lv1 = textures
  distance = (lambda a, b: jnp.mean((a - b) ** 2)) if loss_type == "l2" else (
      lambda a, b: jnp.mean(jnp.abs(a - b)))
  terms = []
  for ours, target, scale in ((sr_lv3, t_lv3, 1), (sr_lv2, t_lv2, 2), (sr_lv1, t_lv1, 4)):
    if use_s:
      gate = jax.nn.sigmoid(s if scale == 1 else upsample_bicubic(s, scale))
      ours, target = ours * gate, target * gate
    terms.append(distance(ours, target))
  return (terms[0] + terms[1] + terms[2]) / 3


def generator_adversarial_loss(d_apply: Callable, sr: jnp.ndarray) -> jnp.ndarray:
  """WGAN generator term -mean(D(sr))."""
  return -jnp.mean(d_apply(sr))


def wgan_gp_discriminator_loss(d_apply: Callable, fake: jnp.ndarray, real: jnp.ndarray,
                               epsilon: jnp.ndarray, gp_lambda: float = 10.0
                               ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """mean(D(fake) - D(real)) + lambda * mean_n (||grad_xhat D(xhat_n)|| - 1)^2.

  `epsilon` (N,) mixes fake and real per sample: xhat = fake * (1 - eps) + real * eps. The
  penalty's input gradient is taken of sum(D(xhat)), so each sample's gradient is its own.
  """
  d_fake = d_apply(fake)
  d_real = d_apply(real)
  eps = epsilon.reshape(-1, 1, 1, 1)
  xhat = fake * (1 - eps) + real * eps
  grad_xhat = jax.grad(lambda x: jnp.sum(d_apply(x)))(xhat)
  norm = jnp.sqrt(jnp.sum(grad_xhat.reshape(grad_xhat.shape[0], -1) ** 2, axis=1))
  penalty = gp_lambda * jnp.mean((norm - 1) ** 2)
  loss = jnp.mean(d_fake - d_real) + penalty
  return loss, {"d_fake": d_fake, "d_real": d_real, "gradient_penalty": penalty,
                "gradient_norm": norm}

"""`layers.conv2d`'s hand-written backward pass against XLA's own convolution gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttsr_jax.models import layers

HIGHEST = jax.lax.Precision.HIGHEST


# Every (kernel, stride) pair of the model: 3x3 and 1x1 convs, stride-2 3x3 convs (CSFI, D),
# on odd and even sizes so that strided windows leave a row and a column out.
@pytest.mark.parametrize("kernel_size,stride,hw", [(3, 1, (9, 7)), (1, 1, (6, 5)),
                                                   (3, 2, (10, 9)), (3, 2, (11, 12))])
def test_first_and_second_derivatives_match_xla(kernel_size, stride, hw):
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (2, *hw, 3))
  kernel = jax.random.normal(keys[1], (kernel_size, kernel_size, 3, 4))
  padding = kernel_size // 2

  def objective(conv):
    return lambda x, kernel: jnp.sum(jnp.sin(conv(x, kernel, stride, padding)))

  ours = objective(lambda *a: layers.conv2d(*a, HIGHEST))
  xla = objective(lambda *a: layers.xla_conv2d(*a, HIGHEST))
  # The same sums in other orders: measured at most 3.2e-7 of the largest entry (0 for the
  # forward pass) on four draws of each case; the bound, 1e-5 of it, is 30x that.
  np.testing.assert_array_equal(ours(x, kernel), xla(x, kernel))
  for a, b in zip(jax.grad(ours, (0, 1))(x, kernel), jax.grad(xla, (0, 1))(x, kernel)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))))

  # The WGAN-GP penalty differentiates an input gradient with respect to the kernel.
  def penalty(f):
    return lambda kernel: jnp.sum(jax.grad(f)(x, kernel) ** 2)

  a, b = jax.grad(penalty(ours))(kernel), jax.grad(penalty(xla))(kernel)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))))


def test_loop_bodies_take_the_hand_written_backward_pass_with_the_same_gradients():
  x = jax.random.normal(jax.random.key(0), (1, 8, 8, 3))
  conv = layers.Conv2d(4, 3, 2)
  params = conv.init(jax.random.key(1), x)
  # A new function for each trace: JAX caches traces by function, not by `loop_body`.
  grad = lambda: jax.grad(lambda p: jnp.sum(conv.apply(p, x) ** 2))
  plain_jaxpr = str(jax.make_jaxpr(grad())(params))
  with layers.loop_body():
    looped_jaxpr = str(jax.make_jaxpr(grad())(params))
    looped = grad()(params)
  # The tests run on XLA:CPU, where loop bodies use `conv2d` (a custom VJP).
  assert "custom_vjp_call" in looped_jaxpr and "custom_vjp_call" not in plain_jaxpr
  for a, b in zip(jax.tree_util.tree_leaves(grad()(params)), jax.tree_util.tree_leaves(looped)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # rtol as above, atol near zero

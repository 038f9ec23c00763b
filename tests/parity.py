"""Comparisons against the golden arrays of tests/golden (NCHW, some stored compactly), and the
float32 error bounds that the tests' tolerances come from."""

import pathlib

import numpy as np

GOLDEN_DIR = pathlib.Path(__file__).resolve().parent / "golden"  # see golden/README.md

U32 = 2.0 ** -24  # float32's unit roundoff: rounding moves a value by at most U32 of it


def gamma(n: int, u: float = U32) -> float:
  """gamma_n = n u / (1 - n u): a sum of n terms, or a dot product of length n, computed in
  floating point in any order is off by at most gamma_n times the sum of the terms' magnitudes
  (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., section 3.1)."""
  return n * u / (1 - n * u)



# Critic scores (and the adversarial loss, their negated mean) sum about a thousand terms of
# magnitude up to 0.4 that cancel to about 0.03, so a relative tolerance on the result measures
# the cancellation, not the implementation. XLA:CPU's float32 kernels differ from the reference
# there by up to 4.3e-7 (measured with YNNPACK convolutions on an AMD EPYC; 1.5e-7 with Eigen's),
# while the same network in float64 reproduced the reference to 1e-9 on the golden weights (the
# test holds it to this bound too: the reference's own float32 rounding is the rest).
CRITIC_SCORE_ATOL = 1e-6

# The same train step with its batch sums in another order (devices, microbatches, processes),
# on tiny_configs.all_losses: parameters after its first Adam steps within REORDERED_STEP_ATOL,
# a tenth of one step (lr 1e-4), so that a step taken on mismatched data fails. With Adam's eps
# at 1e-3 an entry moves by at most lr / eps = 0.1 times its gradient's rounding difference;
# measured over test_sharding.py's layouts: parameters at most 1.5e-8 apart after two steps,
# metrics (batch means) at most 2.2e-7 relative, against REORDERED_STEP_RTOL (84 float32 ulps)
# or CRITIC_SCORE_ATOL where critic scores cancel.
REORDERED_STEP_ATOL = 1e-5
REORDERED_STEP_RTOL = 1e-5


def load_case(name: str) -> dict[str, np.ndarray]:
  """Loads one golden `.npz` fully into memory."""
  with np.load(GOLDEN_DIR / name) as data:
    return {k: data[k] for k in data.files}


def nhwc(x: np.ndarray) -> np.ndarray:
  return np.asarray(x).transpose(0, 2, 3, 1)


def nchw(x) -> np.ndarray:
  return np.asarray(x).transpose(0, 3, 1, 2)


# Features, textures, S and sr against the reference's (golden/README.md): within FEATURE_REL of
# the tensor's scale max(1, max|b|). The reference itself moved by up to 1.4e-6 of the scale
# between thread counts (two summation orders, measured there); FEATURE_REL is 84 float32 ulps.
FEATURE_REL = 1e-5


def assert_feature_close(ours_nhwc, case: dict, name: str, rel: float = FEATURE_REL) -> None:
  """Checks a feature map against a full or compact golden tensor: |a - b| <= rel *
  max(1, max|b|) element-wise, per-channel sums and sums of squares relative rel."""
  ours = nchw(ours_nhwc).astype(np.float64)
  if name in case:
    want = case[name].astype(np.float64)
    assert ours.shape == want.shape, (name, ours.shape, want.shape)
    err = np.abs(ours - want).max()
    assert err <= rel * max(1.0, np.abs(want).max()), f"{name}: max |diff| {err:.3g}"
    return
  assert ours.shape == tuple(case[f"{name}/shape"]), (name, ours.shape, case[f"{name}/shape"])
  scale = max(1.0, float(case[f"{name}/max_abs"]))
  channels = case[f"{name}/subset_channels"]
  err = np.abs(ours[:, channels] - case[f"{name}/subset"]).max()
  assert err <= rel * scale, f"{name}: subset max |diff| {err:.3g} (scale {scale:.3g})"
  for stat, values in (("ch_sum", ours.sum(axis=(0, 2, 3))),
                       ("ch_sumsq", (ours ** 2).sum(axis=(0, 2, 3)))):
    want = case[f"{name}/{stat}"]
    np.testing.assert_allclose(values, want, rtol=rel, atol=rel * scale, err_msg=f"{name}/{stat}")

"""Comparisons against the golden arrays of tests/golden (NCHW, some stored compactly)."""

import pathlib

import numpy as np

GOLDEN_DIR = pathlib.Path(__file__).resolve().parent / "golden"  # see golden/README.md


# Critic scores (and the adversarial loss, their negated mean) sum about a thousand terms of
# magnitude up to 0.4 that cancel to about 0.03, so a relative tolerance on the result measures
# the cancellation, not the implementation. XLA:CPU's float32 kernels differ from the reference
# there by up to 4.3e-7 (measured with YNNPACK convolutions on an AMD EPYC; 1.5e-7 with Eigen's),
# while the same network in float64 reproduced the reference to 1e-9 on the golden weights (the
# test holds it to this bound too: the reference's own float32 rounding is the rest).
CRITIC_SCORE_ATOL = 1e-6


def load_case(name: str) -> dict[str, np.ndarray]:
  """Loads one golden `.npz` fully into memory."""
  with np.load(GOLDEN_DIR / name) as data:
    return {k: data[k] for k in data.files}


def nhwc(x: np.ndarray) -> np.ndarray:
  return np.asarray(x).transpose(0, 2, 3, 1)


def nchw(x) -> np.ndarray:
  return np.asarray(x).transpose(0, 3, 1, 2)


def assert_feature_close(ours_nhwc, case: dict, name: str, rel: float = 1e-5) -> None:
  """Checks a feature map against a full or compact golden tensor with the README's tolerances:
  |a - b| <= rel * max(1, max|b|) element-wise, per-channel sums and sums of squares relative
  rel."""
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

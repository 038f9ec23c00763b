"""ttsr_jax.metrics against the reference's golden PSNR/SSIM (parity case g) and hand-made cases."""

import math

import numpy as np
import pytest

from parity import load_case
from ttsr_jax import metrics

# tests/golden/README.md, tolerances, far above both float errors: PSNR's float32 mean of squares
# (NumPy's pairwise sum, within ceil(log2 n) u = 17 u for n <= 76800 values: 4.4e-6 dB; equal to
# the reference's on case g), and SSIM's float64 filter, direct here and a DFT in the
# reference's OpenCV (measured at most 1.2e-13 apart on case g).
PSNR_TOL_DB = 1e-4
SSIM_TOL = 1e-7

MODEL_PAIRS = ("g1_model_sr", "g2_bicubic_demo", "g3_odd_float", "g4_uint8_mismatch")


def _nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
  return np.transpose(x, (0, 2, 3, 1))


def _grey_to_unit(values: np.ndarray) -> np.ndarray:
  """[0, 255] grey levels to the model's [-1, 1] range, float32 (as the data pipeline does)."""
  return (np.asarray(values, np.float32) / np.float32(127.5) - 1).astype(np.float32)


def test_case_g_covers_the_listed_pairs():
  case = load_case("g_metrics.npz")
  assert set(case["pair_names"]) == set(MODEL_PAIRS) | {"g5_direct_float", "g5_direct_float64"}


@pytest.mark.parametrize("name", MODEL_PAIRS)
@pytest.mark.parametrize("batched", [True, False], ids=["nhwc", "hwc"])
def test_calc_psnr_and_ssim_matches_reference(name, batched):
  case = load_case("g_metrics.npz")
  sr = _nchw_to_nhwc(case[f"{name}/sr"])
  hr = _nchw_to_nhwc(case[f"{name}/hr"])
  if not batched:
    sr, hr = sr[0], hr[0]
  psnr, ssim = metrics.calc_psnr_and_ssim(sr, hr)
  assert abs(psnr - case[f"{name}/psnr"]) <= PSNR_TOL_DB
  assert abs(ssim - case[f"{name}/ssim"]) <= SSIM_TOL


@pytest.mark.parametrize("name, dtype", [("g5_direct_float", np.float32),
                                         ("g5_direct_float64", np.float64)])
def test_direct_calls_match_reference(name, dtype):
  case = load_case("g_metrics.npz")
  sr = case["g5_direct_float/sr_hwc"].astype(dtype)
  hr = case["g5_direct_float/hr_hwc"].astype(dtype)
  assert abs(metrics.calc_psnr(sr, hr) - case[f"{name}/psnr"]) <= PSNR_TOL_DB
  assert abs(metrics.calc_ssim(sr, hr) - case[f"{name}/ssim"]) <= SSIM_TOL


def test_psnr_is_computed_in_the_input_dtype():
  # The two stored values differ by ~5e-7 dB only because of the dtype; each must be the nearer.
  case = load_case("g_metrics.npz")
  sr, hr = case["g5_direct_float/sr_hwc"], case["g5_direct_float/hr_hwc"]
  ref32, ref64 = case["g5_direct_float/psnr"], case["g5_direct_float64/psnr"]
  psnr32 = metrics.calc_psnr(sr, hr)
  psnr64 = metrics.calc_psnr(sr.astype(np.float64), hr.astype(np.float64))
  assert abs(psnr32 - ref32) < abs(psnr32 - ref64)
  assert abs(psnr64 - ref64) < abs(psnr64 - ref32)


def test_gaussian_filter_equals_2d_valid_correlation():
  # Brute force with the reference's 2-D window np.outer(k, k), one shifted slice per tap.
  taps = metrics._GAUSSIAN_TAPS
  offsets = np.arange(11) - 5.0
  gauss = np.exp(-offsets**2 / (2 * 1.5**2))
  np.testing.assert_allclose(taps, gauss / gauss.sum(), rtol=1e-15, atol=0)  # a few float64 u
  window = np.outer(taps, taps)
  img = np.random.default_rng(0).uniform(0, 255.0**2, (37, 53))
  expected = np.zeros((27, 43))
  for i in range(11):
    for j in range(11):
      expected += window[i, j] * img[i:i + 27, j:j + 43]
  # 121 terms, all positive: gamma_121 (float64) = 1.3e-14 relative, in any order.
  np.testing.assert_allclose(metrics._gaussian_filter_valid(img), expected, rtol=1e-13, atol=0)


def test_ttsr_protocol_constant_offset_by_formula():
  grey = np.random.default_rng(1).integers(40, 200, (20, 24, 3))
  psnr, _ = metrics.calc_psnr_and_ssim(_grey_to_unit(grey + 10), _grey_to_unit(grey))
  d_y = 10 / 255 * (65.738 + 129.057 + 25.064) / 256
  assert psnr == pytest.approx(-20 * math.log10(d_y), abs=1e-4)


def test_ttsr_protocol_rounds_half_to_even():
  hr = np.full((12, 12, 3), 100.0)
  for half, even in ((100.5, 100.0), (101.5, 102.0)):
    sr = _grey_to_unit(np.full((12, 12, 3), half))
    assert np.all((sr + np.float32(1)) * np.float32(127.5) == half)  # a true tie in float32
    psnr, ssim = metrics.calc_psnr_and_ssim(sr, _grey_to_unit(np.full_like(hr, even)))
    assert (psnr, ssim) == (math.inf, 1.0)


def test_ttsr_protocol_crops_to_the_common_top_left():
  rng = np.random.default_rng(2)
  hr = _grey_to_unit(rng.integers(0, 256, (30, 25, 3)))
  sr = _grey_to_unit(rng.integers(0, 256, (33, 29, 3)))
  cropped = metrics.calc_psnr_and_ssim(sr[:30, :25], hr)
  assert metrics.calc_psnr_and_ssim(sr, hr) == cropped
  assert metrics.calc_psnr_and_ssim(hr, sr) == cropped


def _framed_pair(inner_hr: float, inner_sr: float, size: int = 32, border: int = 4):
  """RGB images whose interiors are given grey levels and whose 4-px frames differ at random."""
  rng = np.random.default_rng(3)
  hr = rng.integers(0, 256, (size, size, 3)).astype(np.float64)
  sr = rng.integers(0, 256, (size, size, 3)).astype(np.float64)
  hr[border:-border, border:-border] = inner_hr
  sr[border:-border, border:-border] = inner_sr
  return _grey_to_unit(sr), _grey_to_unit(hr)


def test_mmagic_rgb_shaves_the_border():
  sr, hr = _framed_pair(100.0, 110.0)
  psnr, ssim = metrics.calc_psnr_and_ssim(sr, hr, "mmagic")
  assert psnr == pytest.approx(20 * math.log10(255 / 10), abs=1e-4)
  # Constant interiors: the structure terms are 1 and SSIM reduces to its luminance term.
  c1 = (0.01 * 255)**2
  assert ssim == pytest.approx((2 * 100 * 110 + c1) / (100**2 + 110**2 + c1), abs=1e-10)
  unshaved = metrics.calc_psnr_and_ssim(sr, hr, "mmagic", crop_border=0)
  assert unshaved[0] < psnr - 1


def test_mmagic_y_channel_by_formula():
  grey = np.random.default_rng(4).integers(40, 200, (24, 24, 3))
  shifted = grey.copy()
  shifted[..., 0] += 10  # red only: the Y difference is 10 * 65.481 / 255 everywhere
  sr, hr = _grey_to_unit(shifted), _grey_to_unit(grey)
  psnr_y, _ = metrics.calc_psnr_and_ssim(sr, hr, "mmagic", y_channel=True)
  assert psnr_y == pytest.approx(20 * math.log10(255 / (10 * 65.481 / 255)), abs=1e-3)
  psnr_rgb, _ = metrics.calc_psnr_and_ssim(sr, hr, "mmagic")
  assert psnr_rgb == pytest.approx(10 * math.log10(255**2 * 3 / 100), abs=1e-4)


def test_identical_images_give_infinite_psnr():
  img = np.random.default_rng(5).uniform(0, 255, (20, 20, 3)).astype(np.float32)
  assert metrics.calc_psnr(img, img) == math.inf
  assert metrics.calc_ssim(img, img) == 1.0
  unit = _grey_to_unit(np.round(img))
  assert metrics.calc_psnr_and_ssim(unit, unit) == (math.inf, 1.0)
  assert metrics.calc_psnr_and_ssim(unit, unit, "mmagic") == (math.inf, 1.0)


def test_integer_inputs_do_not_wrap_around():
  a = np.full((12, 12, 3), 10, np.uint8)
  b = np.full((12, 12, 3), 20, np.uint8)
  assert metrics.calc_psnr(a, b) == metrics.calc_psnr(b, a) == pytest.approx(
      metrics.calc_psnr(a.astype(np.float64), b.astype(np.float64)))


@pytest.mark.parametrize("shape", [(16, 16), (16, 16, 4), (2, 16, 16, 3), (1, 3, 16, 16)])
def test_bad_shapes_are_rejected(shape):
  bad = np.zeros(shape, np.float32)
  good = np.zeros((16, 16, 3), np.float32)
  if len(shape) != 4:
    with pytest.raises(ValueError, match=r"img1 must be an RGB image of shape \(H, W, 3\)"):
      metrics.calc_psnr(bad, good)
    with pytest.raises(ValueError, match=r"img2 must be an RGB image of shape \(H, W, 3\)"):
      metrics.calc_ssim(good, bad)
  with pytest.raises(ValueError, match=r"sr must be an RGB image .* \(H, W, 3\) or \(1, H, W, 3\)"):
    metrics.calc_psnr_and_ssim(bad, good)


def test_bad_arguments_are_rejected():
  img = np.zeros((16, 16, 3), np.float32)
  with pytest.raises(ValueError, match="same shape"):
    metrics.calc_psnr(img, img[:15])
  with pytest.raises(ValueError, match=r"at least 11 x 11 pixels .* got 10 x 16"):
    metrics.calc_ssim(img[:10], img[:10])
  with pytest.raises(ValueError, match=r"got 8 x 8 after shaving crop_border=4 from 16 x 16"):
    metrics.calc_psnr_and_ssim(img, img, "mmagic")
  with pytest.raises(ValueError, match="at least 11 x 11"):
    metrics.calc_psnr_and_ssim(img[:10], img)  # the common crop is 10 x 16
  with pytest.raises(ValueError, match="protocol must be one of"):
    metrics.calc_psnr_and_ssim(img, img, "basicsr")
  with pytest.raises(ValueError, match="protocol='mmagic' only"):
    metrics.calc_psnr_and_ssim(img, img, crop_border=4)
  with pytest.raises(ValueError, match="crop_border must be >= 0"):
    metrics.calc_psnr_and_ssim(img, img, "mmagic", crop_border=-1)
  with pytest.raises(ValueError, match="needs sr and hr of the same shape"):
    metrics.calc_psnr_and_ssim(img, img[:15], "mmagic", crop_border=0)

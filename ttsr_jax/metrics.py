"""PSNR and SSIM for evaluation, host-side NumPy.

Two protocols are offered, because published TTSR numbers come from two different evaluators:

* ``'ttsr'``: the reference's own ``utils.py`` (what ``eval.sh`` prints, e.g. 26.99 / 0.800 for the
  released TTSR-rec checkpoint on CUFED5). Y-channel PSNR on rounded values without border shaving,
  in float32; Y-channel SSIM in float64 with a valid-mode 11x11 Gaussian window. See
  ``calc_psnr``, ``calc_ssim`` and ``ttsr_psnr_and_ssim``.
* ``'mmagic'``: mmagic's ``PSNR`` / ``SSIM`` metrics as its TTSR configs use them (RGB, ``scale``
  pixels shaved; its CUFED table, e.g. 25.24 / 0.749 for ttsr-rec). See ``mmagic_psnr_and_ssim``.

``calc_psnr_and_ssim`` picks one of the two by name.

Images are RGB, HWC (or batch-1 NHWC for model outputs). The one deliberate departure from the
reference: identical images give an infinite PSNR instead of a math domain error.
"""

import math
from typing import Any

import numpy as np

# BT.601 luma for [0, 255] RGB: the reference divides these by 256, mmagic (mmcv.rgb2ycbcr) applies
# them to [0, 1] RGB; both add 16.
_TTSR_Y_WEIGHTS = (65.738, 129.057, 25.064)
_MMAGIC_Y_WEIGHTS = (65.481, 128.553, 24.966)

_SSIM_C1 = (0.01 * 255) ** 2
_SSIM_C2 = (0.03 * 255) ** 2
_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5


def _gaussian_taps(size: int, sigma: float) -> np.ndarray:
  """The 1-D kernel of cv2.getGaussianKernel(size, sigma) (odd size, sigma > 0), float64.

  OpenCV fixes the centre tap to exp(0) = 1 and scales every tap by the reciprocal of the sum;
  following it keeps the taps within an ulp of what the reference used.
  """
  half = (size - 1) // 2
  offsets = np.arange(-half, 0, dtype=np.float64)
  side = np.exp(offsets * offsets * (-0.5 / (sigma * sigma)))
  scale = 1.0 / (2.0 * np.cumsum(side)[-1] + 1.0)
  return np.concatenate([side, [1.0], side[::-1]]) * scale


_GAUSSIAN_TAPS = _gaussian_taps(_SSIM_WINDOW, _SSIM_SIGMA)


def _gaussian_filter_valid(img: np.ndarray) -> np.ndarray:
  """Valid-mode correlation of a 2-D float64 array with the 11x11 Gaussian window.

  Equals the reference's ``cv2.filter2D(img, -1, outer(k, k))[5:-5, 5:-5]`` to about 1e-15 of the
  largest value: OpenCV goes through a DFT for float64 and this kernel size, so neither is exact.
  The window is separable, so two 1-D passes replace the 2-D sum.
  """
  taps = _GAUSSIAN_TAPS
  out_h = img.shape[0] - taps.size + 1
  out_w = img.shape[1] - taps.size + 1
  rows = taps[0] * img[:out_h]
  for i in range(1, taps.size):
    rows += taps[i] * img[i:i + out_h]
  out = taps[0] * rows[:, :out_w]
  for j in range(1, taps.size):
    out += taps[j] * rows[:, j:j + out_w]
  return out


def _ssim_single_channel(img1: np.ndarray, img2: np.ndarray) -> float:
  """Mean SSIM of two 2-D float64 images in [0, 255] over the valid window positions."""
  mu1 = _gaussian_filter_valid(img1)
  mu2 = _gaussian_filter_valid(img2)
  mu1_sq = mu1**2
  mu2_sq = mu2**2
  mu1_mu2 = mu1 * mu2
  sigma1_sq = _gaussian_filter_valid(img1**2) - mu1_sq
  sigma2_sq = _gaussian_filter_valid(img2**2) - mu2_sq
  sigma12 = _gaussian_filter_valid(img1 * img2) - mu1_mu2
  ssim_map = ((2 * mu1_mu2 + _SSIM_C1) * (2 * sigma12 + _SSIM_C2)) / (
      (mu1_sq + mu2_sq + _SSIM_C1) * (sigma1_sq + sigma2_sq + _SSIM_C2))
  return float(ssim_map.mean())


def _check_rgb_pair(img1: np.ndarray, img2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Returns both images as arrays after checking they are same-shape (H, W, 3) RGB images."""
  img1 = np.asarray(img1)
  img2 = np.asarray(img2)
  for name, img in (("img1", img1), ("img2", img2)):
    if img.ndim != 3 or img.shape[-1] != 3:
      raise ValueError(
          f"{name} must be an RGB image of shape (H, W, 3) with values in [0, 255]; "
          f"got shape {img.shape}")
  if img1.shape != img2.shape:
    raise ValueError(f"img1 and img2 must have the same shape; got {img1.shape} and {img2.shape}")
  return img1, img2


def _check_ssim_size(shape: tuple[int, ...], what: str) -> None:
  if shape[0] < _SSIM_WINDOW or shape[1] < _SSIM_WINDOW:
    raise ValueError(
        f"SSIM needs images of at least {_SSIM_WINDOW} x {_SSIM_WINDOW} pixels (its Gaussian "
        f"window, valid positions only); got {shape[0]} x {shape[1]}{what}")


def calc_psnr(img1: np.ndarray, img2: np.ndarray) -> float:
  """Y-channel PSNR exactly as the reference's ``utils.calc_psnr``.

  ``d = (img1 - img2) / 255`` per channel, luma of the difference
  ``dY = d_R * 65.738/256 + d_G * 129.057/256 + d_B * 25.064/256`` (the +16 offset cancels),
  ``PSNR = -10 * log10(mean(dY^2))`` with no border shaved. The arithmetic runs in the inputs'
  (promoted) floating dtype, in the reference's operation order, so float32 inputs reproduce its
  float32 result bit for bit; integer inputs are computed in float64 (the reference would wrap
  uint8 differences around).

  Args:
    img1: RGB image, shape (H, W, 3), values in [0, 255].
    img2: RGB image of the same shape.

  Returns:
    PSNR in dB; ``inf`` for identical images (where the reference crashes on log10(0)).
  """
  img1, img2 = _check_rgb_pair(img1, img2)
  dtype = np.result_type(img1, img2)
  if not np.issubdtype(dtype, np.floating):
    dtype = np.float64
  diff = (img1.astype(dtype, copy=False) - img2.astype(dtype, copy=False)) / 255.0
  diff_y = (diff[..., 0] * 65.738 / 256.0 + diff[..., 1] * 129.057 / 256.0
            + diff[..., 2] * 25.064 / 256.0)
  mse = np.mean(np.square(diff_y))
  if mse == 0:
    return math.inf
  return -10.0 * math.log10(mse)


def calc_ssim(img1: np.ndarray, img2: np.ndarray) -> float:
  """Y-channel SSIM exactly as the reference's ``utils.calc_ssim``.

  Both images go to float64 luma ``Y = img @ [65.738, 129.057, 25.064] / 256 + 16``; then the
  standard SSIM with an 11x11 Gaussian window (sigma 1.5, as ``cv2.getGaussianKernel``) over the
  valid window positions only, ``C1 = (0.01*255)^2``, ``C2 = (0.03*255)^2``, averaged over the map.
  No border is shaved.

  Args:
    img1: RGB image, shape (H, W, 3), values in [0, 255], H and W at least 11.
    img2: RGB image of the same shape.

  Returns:
    SSIM (1.0 for identical images).
  """
  img1, img2 = _check_rgb_pair(img1, img2)
  _check_ssim_size(img1.shape, "")
  weights = np.array(_TTSR_Y_WEIGHTS)
  y1 = np.dot(img1, weights) / 256.0 + 16.0
  y2 = np.dot(img2, weights) / 256.0 + 16.0
  return _ssim_single_channel(y1, y2)


def _model_output_to_hwc(x: np.ndarray, name: str) -> np.ndarray:
  """Checks a model output (HWC or batch-1 NHWC) and returns it as float32 HWC."""
  x = np.asarray(x)
  shape = x.shape
  if x.ndim == 4 and shape[0] == 1:
    x = x[0]
  if x.ndim != 3 or x.shape[-1] != 3:
    raise ValueError(
        f"{name} must be an RGB image in [-1, 1] of shape (H, W, 3) or (1, H, W, 3); "
        f"got shape {shape}")
  return x.astype(np.float32, copy=False)


def _mmagic_psnr(img1: np.ndarray, img2: np.ndarray) -> float:
  """mmagic's ``psnr`` on already transformed float32 (H, W, C) images."""
  mse = np.mean(np.square(img1 - img2))
  if mse == 0:
    return math.inf
  # mmagic evaluates the formula on the float32 mse, so its result has float32 precision.
  return float(20.0 * np.log10(255.0 / np.sqrt(mse)))


def ttsr_psnr_and_ssim(sr: np.ndarray, hr: np.ndarray) -> tuple[float, float]:
  """The reference's ``utils.calc_psnr_and_ssim`` (the numbers of ``eval.sh``).

  ``x -> (x + 1) * 127.5`` in float32; if the shapes differ, both are cropped at the top-left to
  the common height and width; values are rounded half to even (no clipping), then ``calc_psnr``
  (Y channel, float32) and ``calc_ssim`` (Y channel, float64) are applied with no border shaved.

  Args:
    sr: Model output, shape (H, W, 3) or (1, H, W, 3), values in [-1, 1].
    hr: Target, same layout and range.

  Returns:
    ``(psnr, ssim)`` as Python floats; PSNR is ``inf`` for identical images.
  """
  sr = _model_output_to_hwc(sr, "sr")
  hr = _model_output_to_hwc(hr, "hr")
  h = min(sr.shape[0], hr.shape[0])
  w = min(sr.shape[1], hr.shape[1])
  img1 = np.round((sr[:h, :w] + 1.0) * 127.5)
  img2 = np.round((hr[:h, :w] + 1.0) * 127.5)
  return calc_psnr(img1, img2), calc_ssim(img1, img2)


def mmagic_psnr_and_ssim(sr: np.ndarray, hr: np.ndarray, *, crop_border: int = 4,
                         y_channel: bool = False) -> tuple[float, float]:
  """mmagic's ``PSNR`` and ``SSIM`` metrics as configured for TTSR (``crop_border=scale``), so
  results compare with mmagic's model-zoo table:

  1. ``x -> clip(x * 127.5 + 127.5, 0, 255)`` in float32, **not** rounded (mmagic's
     ``DataPreprocessor.destruct``); the shapes must be equal (mmagic asserts it).
  2. With ``y_channel=True``, each image becomes ``Y = float32((RGB/255 @ [65.481, 128.553,
     24.966] + 16) / 255) * 255`` (``mmcv.rgb2ycbcr``, y_only); otherwise the 3 RGB channels stay.
  3. ``crop_border`` pixels (the x4 scale by default) are removed from each of the four sides.
  4. PSNR: ``20 * log10(255 / sqrt(mse))`` with the mse over all remaining pixels and channels,
     all in float32; ``inf`` if the mse is 0.
  5. SSIM: per channel, the same float64 Gaussian SSIM as the reference (11x11, sigma 1.5, valid
     positions, same C1/C2), averaged over the channels.

  BasicSR's ``calculate_psnr`` / ``calculate_ssim`` (with ``test_y_channel`` for Y) define the same
  quantities but evaluate images rounded to uint8 and compute PSNR in float64; its numbers differ
  from mmagic's by that rounding only (typically well under 0.01 dB).

  Args:
    sr: Model output, shape (H, W, 3) or (1, H, W, 3), values in [-1, 1].
    hr: Target, same layout and range.
    crop_border: pixels shaved on each side.
    y_channel: evaluate the Y channel instead of RGB.

  Returns:
    ``(psnr, ssim)`` as Python floats; PSNR is ``inf`` for identical images.
  """
  sr = _model_output_to_hwc(sr, "sr")
  hr = _model_output_to_hwc(hr, "hr")
  if crop_border < 0:
    raise ValueError(f"crop_border must be >= 0; got {crop_border}")
  if sr.shape != hr.shape:
    raise ValueError(
        f"protocol='mmagic' needs sr and hr of the same shape; got {sr.shape} and {hr.shape}")
  crop = crop_border
  h, w = sr.shape[0] - 2 * crop, sr.shape[1] - 2 * crop
  _check_ssim_size((h, w), f" after shaving crop_border={crop} from {sr.shape[0]} x {sr.shape[1]}")
  imgs = []
  for x in (sr, hr):
    img = np.clip(x * 127.5 + 127.5, 0.0, 255.0)
    if y_channel:
      luma = np.dot(img / 255.0, np.array(_MMAGIC_Y_WEIGHTS)) + 16.0
      img = ((luma / 255.0).astype(np.float32) * 255.0)[..., None]
    imgs.append(img[crop:crop + h, crop:crop + w])
  img1, img2 = imgs
  psnr = _mmagic_psnr(img1, img2)
  ssim = float(np.mean([
      _ssim_single_channel(img1[..., c].astype(np.float64), img2[..., c].astype(np.float64))
      for c in range(img1.shape[-1])
  ]))
  return psnr, ssim


_BY_PROTOCOL = {"ttsr": ttsr_psnr_and_ssim, "mmagic": mmagic_psnr_and_ssim}
PROTOCOLS = tuple(_BY_PROTOCOL)


def calc_psnr_and_ssim(sr: np.ndarray, hr: np.ndarray, protocol: str = "ttsr",
                       **options: Any) -> tuple[float, float]:
  """PSNR and SSIM of a model output against its target under a protocol named by a config:
  ``'ttsr'`` (`ttsr_psnr_and_ssim`) or ``'mmagic'`` (`mmagic_psnr_and_ssim`, whose keyword
  options ``crop_border`` and ``y_channel`` pass through)."""
  if protocol not in PROTOCOLS:
    raise ValueError(f"protocol must be one of {PROTOCOLS}; got {protocol!r}")
  if protocol == "ttsr" and options:
    raise ValueError(
        f"{', '.join(sorted(options))} apply to protocol='mmagic' only; the 'ttsr' protocol is "
        "always Y-channel with no border shaved")
  return _BY_PROTOCOL[protocol](sr, hr, **options)

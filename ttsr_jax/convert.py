"""Reference (PyTorch) state dicts <-> our Flax parameters.

The reference names tensors `MainNet.SFE.RBs.0.conv1.weight`, `LTE.slice3.10.bias`,
`conv1.weight` (discriminator) or `slice1.28.weight` (perceptual VGG19); conv weights are OIHW and
Linear weights (out, in). Our parameters are nested dicts with the same names (a numeric component
joins its parent: `RBs.0` -> `RBs_0`; VGG convs are `features_{k}` whatever their slice), HWIO
kernels and (in, out) dense kernels.
"""

import os
import pathlib
import re
from typing import Any, Mapping, Union

import flax
import jax
import numpy as np

from ttsr_jax.models.vgg import MEAN_SHIFT_BIAS, MEAN_SHIFT_SCALE

Params = dict[str, Any]
StateDict = Mapping[str, np.ndarray]

_MEAN_SHIFT_KEYS = ("LTE.sub_mean.weight", "LTE.sub_mean.bias", "sub_mean.weight", "sub_mean.bias")
# LTE_copy is a per-iteration copy of the LTE and SearchNet a leftover; the reference's own
# checkpoint saver drops both, and loading ignores them.
_IGNORED_PREFIXES = ("LTE_copy.", "SearchNet.")
_VGG_SLICE_OF_INDEX = {0: 1, 2: 2, 5: 2, 7: 3, 10: 3}  # LTE slices of torchvision indices


class StateDictError(ValueError):
  """A state dict that does not fit the model (missing/unexpected keys, wrong shapes)."""


def load_state_dict(source: Union[str, os.PathLike, StateDict]) -> dict[str, np.ndarray]:
  """Reads a reference state dict from a mapping, an `.npz` or a PyTorch `.pt`/`.pth` file.

  A `module.` prefix (DataParallel) is stripped; torch is only imported for `.pt`/`.pth`.
  """
  if isinstance(source, Mapping):
    items = dict(source)
  else:
    path = pathlib.Path(source)
    if not path.is_file():
      raise FileNotFoundError(f"{path}: no such state-dict file (expected .npz, .pt or .pth)")
    if path.suffix == ".npz":
      with np.load(path) as data:
        items = {k: data[k] for k in data.files}
    elif path.suffix in (".pt", ".pth"):
      try:
        import torch  # pylint: disable=g-import-not-at-top
      except ImportError as e:
        raise ImportError(f"{path}: reading PyTorch files needs torch (pip install torch), "
                          "or convert it to .npz where torch is installed") from e
      loaded = torch.load(path, map_location="cpu", weights_only=True)
      if isinstance(loaded, Mapping) and "state_dict" in loaded:
        loaded = loaded["state_dict"]
      items = {k: v.detach().cpu().numpy() for k, v in loaded.items()}
    else:
      raise StateDictError(f"{path}: unknown state-dict format {path.suffix!r}; "
                           "expected .npz, .pt or .pth")
  return {k.removeprefix("module."): np.asarray(v) for k, v in items.items()}


def _our_path(key: str) -> tuple[str, ...]:
  """`MainNet.RB11.0.conv1.weight` -> ('MainNet', 'RB11_0', 'conv1', 'kernel')."""
  parts = key.split(".")
  path = []
  for i, part in enumerate(parts[:-1]):
    if part.isdigit():
      if path and re.fullmatch(r"slice\d", path[-1]):
        path[-1] = f"features_{part}"
      else:
        path[-1] = f"{path[-1]}_{part}"
    else:
      path.append(part)
  leaf = {"weight": "kernel", "bias": "bias"}.get(parts[-1])
  if leaf is None:
    raise StateDictError(f"{key}: expected a '.weight' or '.bias' entry")
  return (*path, leaf)


def _reference_key(path: tuple[str, ...], vgg_prefix: str) -> str:
  """Inverse of `_our_path`; VGG convs get `vgg_prefix` (slice names of the LTE or 'slice1')."""
  parts = []
  for part in path[:-1]:
    match = re.fullmatch(r"(.*)_(\d+)", part)
    if part.startswith("features_"):
      index = int(part.split("_")[1])
      slice_id = _VGG_SLICE_OF_INDEX[index] if vgg_prefix == "LTE" else 1
      parts += [f"slice{slice_id}", str(index)]
    elif match and not re.fullmatch(r"conv\d+_\d+", part):
      parts += [match.group(1), match.group(2)]
    else:
      parts.append(part)
  return ".".join(parts + [{"kernel": "weight", "bias": "bias"}[path[-1]]])


def _to_ours(value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:  # OIHW -> HWIO
    return value.transpose(2, 3, 1, 0)
  if value.ndim == 2:  # Linear (out, in) -> (in, out)
    return value.T
  return value


def _to_reference(value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:
    return value.transpose(3, 2, 0, 1)
  if value.ndim == 2:
    return value.T
  return value


def _check_mean_shift(state_dict: StateDict) -> None:
  expected = {"weight": np.diag(MEAN_SHIFT_SCALE).reshape(3, 3, 1, 1), "bias": MEAN_SHIFT_BIAS}
  for key in _MEAN_SHIFT_KEYS:
    if key in state_dict:
      want = expected[key.rsplit(".", 1)[1]]
      got = np.asarray(state_dict[key])
      if got.shape != want.shape or not np.allclose(got, want, rtol=1e-6, atol=1e-7):
        raise StateDictError(f"{key}: the frozen ImageNet MeanShift differs from "
                             "mean (0.485, 0.456, 0.406) / std (0.229, 0.224, 0.225)")


def import_state_dict(state_dict: StateDict, target: Params) -> Params:
  """Converts a reference state dict into parameters shaped like `target` (e.g. from
  `jax.eval_shape` of the model's init), rejecting missing/unexpected keys and shape mismatches.

  `target` fixes which keys must be present; every error names the reference key (and shapes in
  the reference's layout).
  """
  _check_mean_shift(state_dict)
  flat_target = flax.traverse_util.flatten_dict(flax.core.unfreeze(target))
  flat = {}
  unexpected = []
  for key, value in state_dict.items():
    if key in _MEAN_SHIFT_KEYS or key.startswith(_IGNORED_PREFIXES):
      continue
    path = _our_path(key)
    if path not in flat_target:
      unexpected.append(key)
      continue
    want = tuple(flat_target[path].shape)
    value = _to_ours(np.asarray(value, np.float32))
    if value.shape != want:
      ref_want = _to_reference(np.empty(want, np.uint8)).shape
      raise StateDictError(f"{key}: shape {tuple(_to_reference(value).shape)} in the file, "
                           f"the model expects {tuple(ref_want)}")
    flat[path] = value
  if unexpected:
    raise StateDictError(f"unexpected keys for this model: {', '.join(sorted(unexpected)[:5])}"
                         + (f" (+{len(unexpected) - 5} more)" if len(unexpected) > 5 else ""))
  missing = [p for p in flat_target if p not in flat]
  if missing:
    vgg_prefix = "LTE" if missing[0][0] == "LTE" else "slice1"
    names = [_reference_key(p, vgg_prefix) for p in missing]
    raise StateDictError(f"missing keys: {', '.join(names[:5])}"
                         + (f" (+{len(names) - 5} more)" if len(names) > 5 else ""))
  return flax.traverse_util.unflatten_dict(flat)


def export_state_dict(params: Params, vgg_prefix: str = "LTE") -> dict[str, np.ndarray]:
  """Our parameters -> a reference-layout state dict (the inverse of `import_state_dict`).

  `vgg_prefix` picks the slice naming of VGG convs: 'LTE' for a TTSR model, 'slice1' for the
  perceptual VGG19. A TTSR export includes the frozen MeanShift like the reference's checkpoints.
  """
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  out = {_reference_key(p, vgg_prefix): _to_reference(np.asarray(v)) for p, v in flat.items()}
  if any(p[0] == "LTE" for p in flat):
    out["LTE.sub_mean.weight"] = np.diag(MEAN_SHIFT_SCALE).reshape(3, 3, 1, 1).astype(np.float32)
    out["LTE.sub_mean.bias"] = MEAN_SHIFT_BIAS.astype(np.float32)
  return out


def infer_model_config(state_dict: StateDict) -> dict[str, Any]:
  """n_feats, num_res_blocks and the LTE variant of a reference TTSR state dict, from its keys."""
  head = "MainNet.SFE.conv_head.weight"
  if head not in state_dict:
    raise StateDictError(f"not a TTSR state dict: no {head!r} among its {len(state_dict)} keys")

  def count(group: str) -> int:
    pattern = re.compile(rf"MainNet\.{re.escape(group)}\.(\d+)\.conv1\.weight$")
    indices = {int(m.group(1)) for k in state_dict if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0

  return {
      "n_feats": int(np.shape(state_dict[head])[0]),
      "num_res_blocks": (count("SFE.RBs"), count("RB11"), count("RB21"), count("RB31")),
      "lte_reduce_lv3": "LTE.reduce_lv3.weight" in state_dict,
  }


def abstract_params(module, *example_inputs) -> Params:
  """Parameter shapes of `module` for the given example inputs, without computing anything."""
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *example_inputs))
  return shapes["params"]

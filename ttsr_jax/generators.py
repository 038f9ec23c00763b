"""A trained generator as inference, the results-table command, reports and export read it.

Two kinds of file hold one, and `load` takes either, giving the parameters and their
`specs.ModelSpec`:
- a reference state dict file (`.pt`/`.pth`, needs torch, or `.npz` of the same keys): the
  architecture comes from its keys (`convert.infer_model_config`), and res_scale, which a state
  dict does not record, from the caller;
- a checkpoint of a training run (the layout is `ttsr_jax/checkpoint.py`'s), of which only the
  generator's parameters and the stored config's "model" entry are read. Such a PATH may be
  WORKDIR, WORKDIR/checkpoints (the latest step) or one step directory.
"""

import importlib.util
import pathlib
from typing import Any, Union

import numpy as np

from ttsr_jax import checkpoint
from ttsr_jax import convert
from ttsr_jax import specs
from ttsr_jax import step as step_lib
from ttsr_jax.checkpoint import CheckpointError
from ttsr_jax.models.ttsr import ARCHITECTURE_KEYS

PathLike = Union[str, pathlib.Path]
Params = dict[str, Any]

STATE_DICT_SUFFIXES = (".npz", ".pt", ".pth")


def abstract_params(model: specs.ModelSpec) -> Params:
  """Shapes and dtypes of the generator parameters of `model`."""
  return convert.abstract_params(model.build(), *step_lib.example_inputs())


def _with_flags(path: pathlib.Path, recorded: dict[str, Any],
                flags: dict[str, Any]) -> specs.ModelSpec:
  """The spec of the architecture a checkpoint records, completed by the caller's flags, which
  must not contradict it."""
  for key, value in flags.items():
    if value is not None and key in recorded and recorded[key] != value:
      raise CheckpointError(f"{path}: the checkpoint has {key}={specs.format_value(recorded[key])}"
                            f", --{key} asks for {specs.format_value(value)} (a checkpoint of "
                            "another model)")
  return specs.ModelSpec(**{**{k: v for k, v in flags.items() if v is not None}, **recorded})


def _from_state_dict(path: pathlib.Path,
                     flags: dict[str, Any]) -> tuple[Params, specs.ModelSpec]:
  try:
    state_dict = convert.load_state_dict(path)
  except ImportError as e:
    raise CheckpointError(str(e)) from None
  except (OSError, ValueError) as e:  # a damaged archive, a pickle inside an .npz
    raise CheckpointError(f"{path}: not a readable state dict ({' '.join(str(e).split())})"
                          ) from None
  try:
    model = _with_flags(path, convert.infer_model_config(state_dict), flags)
    params = convert.import_state_dict(state_dict, abstract_params(model))
  except convert.StateDictError as e:
    raise CheckpointError(f"{path}: {e}") from None
  return params, model


def _from_checkpoint(path: pathlib.Path,
                     flags: dict[str, Any]) -> tuple[Params, specs.ModelSpec]:
  try:
    directory, step = checkpoint.locate(path, str(path))
  except CheckpointError as e:
    raise CheckpointError(f"{e}, or a reference state dict file "
                          f"({', '.join(STATE_DICT_SUFFIXES)})") from None
  stored = checkpoint.stored_config(directory, step).get("model")
  if not isinstance(stored, dict) or any(k not in stored for k in ARCHITECTURE_KEYS):
    raise CheckpointError(f"{directory / str(step) / 'config'}: no model config with "
                          f"{', '.join(ARCHITECTURE_KEYS)} under 'model'")
  model = _with_flags(path, {k: stored[k] for k in ARCHITECTURE_KEYS}, flags)
  return checkpoint.read_generator_params(directory, step, abstract_params(model)), model


def load(path: PathLike, **flags: Any) -> tuple[Params, specs.ModelSpec]:
  """Reads generator parameters and their model from a checkpoint of either kind.

  Args:
    path: a reference state dict file (.pt/.pth/.npz) or a training run's checkpoint (workdir,
      workdir/checkpoints or a step directory).
    **flags: architecture values the caller expects (keys of ARCHITECTURE_KEYS, None = any): those
      the checkpoint records must agree, the others complete the returned spec.

  Returns:
    ({'LTE': ..., 'MainNet': ...} as NumPy arrays, the model with the checkpoint's architecture
    and default settings otherwise).

  Raises:
    CheckpointError: no such checkpoint, an unreadable one, or one of another model.
  """
  path = pathlib.Path(path)
  if path.is_dir():
    return _from_checkpoint(path, flags)
  if not path.is_file():
    raise CheckpointError(f"{path}: checkpoint not found")
  if path.suffix not in STATE_DICT_SUFFIXES:
    raise CheckpointError(f"{path}: unknown checkpoint kind; expected a training run's checkpoint "
                          f"directory or a reference state dict ({', '.join(STATE_DICT_SUFFIXES)})")
  return _from_state_dict(path, flags)


def export(path: PathLike, out: PathLike, **flags: Any) -> specs.ModelSpec:
  """Writes a checkpoint's generator as a reference-layout state dict (.npz, or .pt with torch).

  Returns the model; res_scale is not part of a state dict, so a value other than 1 has to be
  passed again (`--res_scale`) when the export is used.
  """
  out = pathlib.Path(out)
  if out.suffix not in STATE_DICT_SUFFIXES:
    raise CheckpointError(f"{out}: unknown export format; expected "
                          f"{', '.join(STATE_DICT_SUFFIXES)}")
  # Checked before the checkpoint is read, which can take a while.
  if out.suffix != ".npz" and importlib.util.find_spec("torch") is None:
    raise CheckpointError(f"{out}: writing PyTorch files needs torch (pip install torch); "
                          "export to .npz instead")
  params, model = load(path, **flags)
  state_dict = convert.export_state_dict(params, vgg_prefix="LTE")
  out.parent.mkdir(parents=True, exist_ok=True)
  if out.suffix == ".npz":
    with open(out, "wb") as f:  # np.savez on a name would append '.npz' to other suffixes
      np.savez(f, **state_dict)
  else:
    import torch  # pylint: disable=g-import-not-at-top  (optional dependency)
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()}, out)
  return model

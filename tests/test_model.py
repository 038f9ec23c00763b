"""Model shapes and options, and reference-weight import/export errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tiny_configs import TINY, random_inputs, random_params
from ttsr_jax import convert
from ttsr_jax.models.ttsr import TTSR


@pytest.fixture(scope="module")
def tiny_params():
  return random_params()


SIZES = [((5, 7), (12, 20)), ((6, 3), (28, 8))]  # (lr_hw, ref_hw); each one compiles the model


@pytest.mark.parametrize("lr_hw,ref_hw", SIZES)
def test_any_lr_and_reference_size(tiny_params, lr_hw, ref_hw):
  out = jax.jit(TTSR(**TINY).apply)({"params": tiny_params}, *random_inputs(2, lr_hw, ref_hw))
  h, w = lr_hw
  assert out.sr.shape == (2, 4 * h, 4 * w, 3)
  assert out.S.shape == (2, h, w, 1)
  assert out.T_lv3.shape == (2, h, w, 256)
  assert out.T_lv2.shape == (2, 2 * h, 2 * w, 128)
  assert out.T_lv1.shape == (2, 4 * h, 4 * w, 64)
  assert out.index.shape == (2, h * w)
  assert int(out.index.max()) < (ref_hw[0] // 4) * (ref_hw[1] // 4)
  assert float(jnp.abs(out.sr).max()) <= 1.0


def test_batch_items_are_independent(tiny_params):
  inputs = random_inputs(2, *SIZES[0])  # the batch of 2 compiled above
  apply = jax.jit(TTSR(**TINY).apply)
  both = apply({"params": tiny_params}, *inputs)
  second = apply({"params": tiny_params}, *[x[1:] for x in inputs])
  # Another batch size may block the convolutions' sums differently: measured at most 6e-8
  # (one ulp of |sr| <= 1) on four draws of parameters and inputs; 1e-6 is 16 ulps. Mixing
  # items, the bug this catches, moves sr by far more.
  np.testing.assert_allclose(np.asarray(both.sr[1:]), np.asarray(second.sr), atol=1e-6)


def test_lte_and_main_net_parameters_are_separate(tiny_params):
  assert set(tiny_params) == {"LTE", "MainNet"}
  n_lte = sum(x.size for x in jax.tree_util.tree_leaves(tiny_params["LTE"]))
  assert n_lte == 555_328  # the reference's trainable LTE parameters, fixed by VGG19


def test_default_config_parameter_count():
  params = convert.abstract_params(TTSR(), *random_inputs(1, (4, 4), (16, 16)))
  assert sum(x.size for x in jax.tree_util.tree_leaves(params["MainNet"])) == 6_174_275


def test_reduced_lte_variant_feeds_64_channels():
  model = TTSR(**TINY, lte_reduce_lv3=True)
  inputs = random_inputs(1, (4, 4), (16, 16))
  params = random_params(dict(TINY, lte_reduce_lv3=True))
  assert params["LTE"]["reduce_lv3"]["kernel"].shape == (3, 3, 256, 64)
  assert params["MainNet"]["conv11_head"]["kernel"].shape == (3, 3, 64 + 8, 8)
  out = jax.jit(model.apply)({"params": params}, *inputs)
  assert out.T_lv3.shape == (1, 4, 4, 64)
  exported = convert.export_state_dict(params)
  assert convert.infer_model_config(exported) == dict(TINY, lte_reduce_lv3=True)


def test_remat_changes_nothing(tiny_params):
  inputs = random_inputs(1, (4, 4), (16, 16))

  def loss(model):
    return lambda p: jnp.mean(model.apply({"params": p}, *inputs).sr)

  plain = jax.jit(jax.value_and_grad(loss(TTSR(**TINY))))(tiny_params)
  remat = jax.jit(jax.value_and_grad(loss(TTSR(**TINY, remat=True))))(tiny_params)
  # Recomputing the forward pass may only fuse it differently: measured at most 1.9e-9 apart
  # (4e-7 of a tensor's largest entry) on three draws, below this bound by 50x.
  for a, b in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(remat)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_export_then_import_is_identity(tiny_params):
  exported = convert.export_state_dict(tiny_params)
  assert "MainNet.SFE.RBs.0.conv1.weight" in exported and "LTE.slice3.10.bias" in exported
  assert exported["MainNet.SFE.conv_head.weight"].shape == (8, 3, 3, 3)  # OIHW
  config = convert.infer_model_config(exported)
  assert config == dict(TINY, lte_reduce_lv3=False)
  back = convert.import_state_dict(exported, tiny_params)
  jax.tree_util.tree_map(np.testing.assert_array_equal, back,
                         jax.tree_util.tree_map(np.asarray, tiny_params))


def test_import_from_npz_file(tmp_path, tiny_params):
  path = tmp_path / "ttsr.npz"
  np.savez(path, **convert.export_state_dict(tiny_params))
  loaded = convert.load_state_dict(path)
  back = convert.import_state_dict(loaded, tiny_params)
  np.testing.assert_array_equal(back["MainNet"]["conv12"]["kernel"],
                                tiny_params["MainNet"]["conv12"]["kernel"])


def test_import_from_torch_file(tmp_path, tiny_params):
  torch = pytest.importorskip("torch", reason="torch is optional; .pt import is tested where it "
                                              "is installed")
  path = tmp_path / "ttsr.pt"
  state = {f"module.{k}": torch.from_numpy(v.copy())
           for k, v in convert.export_state_dict(tiny_params).items()}
  torch.save(state, path)
  back = convert.import_state_dict(convert.load_state_dict(path), tiny_params)
  np.testing.assert_array_equal(back["LTE"]["features_0"]["kernel"],
                                tiny_params["LTE"]["features_0"]["kernel"])


@pytest.mark.parametrize("edit,message", [
    (lambda sd: sd.pop("MainNet.conv12.bias"), r"missing keys: MainNet\.conv12\.bias"),
    (lambda sd: sd.update({"MainNet.extra.weight": np.zeros(3)}),
     r"unexpected keys.*MainNet\.extra\.weight"),
    (lambda sd: sd.update({"MainNet.conv12.weight": np.zeros((16, 8, 3, 3))}),
     r"MainNet\.conv12\.weight: shape \(16, 8, 3, 3\) in the file, "
     r"the model expects \(32, 8, 3, 3\)"),
    (lambda sd: sd.update({"LTE.slice1.0.weight": np.zeros((64, 3, 5, 5))}),
     r"LTE\.slice1\.0\.weight: shape \(64, 3, 5, 5\) in the file, "
     r"the model expects \(64, 3, 3, 3\)"),
    (lambda sd: sd.update({"LTE.sub_mean.bias": np.zeros(3)}),
     r"LTE\.sub_mean\.bias: the frozen ImageNet MeanShift"),
])
def test_import_errors_name_the_key(tiny_params, edit, message):
  state_dict = convert.export_state_dict(tiny_params)
  edit(state_dict)
  with pytest.raises(convert.StateDictError, match=message):
    convert.import_state_dict(state_dict, tiny_params)

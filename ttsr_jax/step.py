"""Train state, optimisers and the jitted generator/discriminator iteration (reference `trainer.py`).

One iteration, in the reference's order: generator forward; `gan_k` WGAN-GP discriminator
updates on the detached sr; the generator's loss with the *updated* discriminator; the generator
update. Warm-up iterations use the weighted L1 term alone and leave the discriminator untouched.

The step is a pure function of an explicit `TrainState`. Under `jax.jit` with a batch sharded
over a mesh axis the means are global and XLA inserts the reductions; under `pmap`/`shard_map`
pass `axis_name` and the step averages gradients and metrics over that axis itself.
"""

from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from ttsr_jax import losses
from ttsr_jax.models.discriminator import Discriminator
from ttsr_jax.models.ttsr import TTSR
from ttsr_jax.models.vgg import VGG19

Params = Any
Batch = dict[str, jnp.ndarray]
Metrics = dict[str, jnp.ndarray]
IMAGE_KEYS = ("lr", "lrsr", "ref", "refsr", "hr")


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray  # iterations done, warm-up included
  g_params: Params  # {'LTE': ..., 'MainNet': ...}
  d_params: Params
  g_opt_state: optax.OptState
  d_opt_state: optax.OptState
  key: jnp.ndarray  # raw uint32 PRNG key (plain array, so Orbax stores it as is)


def build_model(model_config: ml_collections.ConfigDict) -> TTSR:
  return TTSR(n_feats=model_config.n_feats, num_res_blocks=tuple(model_config.num_res_blocks),
              res_scale=model_config.res_scale, lte_reduce_lv3=model_config.lte_reduce_lv3,
              search_chunk_size=model_config.search_chunk_size,
              dtype=jnp.dtype(model_config.dtype), remat=model_config.remat)


def build_discriminator(config: ml_collections.ConfigDict) -> Discriminator:
  return Discriminator(in_size=4 * config.train_crop_size, dtype=jnp.dtype(config.model.dtype))


def build_vgg(config: ml_collections.ConfigDict) -> VGG19:
  return VGG19(dtype=jnp.dtype(config.model.dtype))


def lr_factor(optim: ml_collections.ConfigDict, step: jnp.ndarray, steps_per_epoch: int,
              num_init_epochs: int) -> jnp.ndarray:
  """StepLR as the reference steps it: once at the start of every main epoch, never in warm-up.

  Main epoch E (1-based) trains with gamma ** floor(E / decay); warm-up epochs with factor 1.
  """
  main_step = step - num_init_epochs * steps_per_epoch
  epoch = jnp.where(main_step >= 0, main_step // steps_per_epoch + 1, 0)
  return jnp.asarray(optim.gamma, jnp.float32) ** jnp.floor(epoch / optim.decay)


def make_optimizers(config: ml_collections.ConfigDict, steps_per_epoch: int
                    ) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
  """Generator Adam with MainNet and LTE learning rates on one schedule; discriminator Adam."""
  o = config.optim

  def adam(base_lr):
    schedule = lambda count: base_lr * lr_factor(o, count, steps_per_epoch, config.num_init_epochs)
    return optax.adam(schedule, b1=o.beta1, b2=o.beta2, eps=o.eps)

  g_tx = optax.multi_transform({"MainNet": adam(o.lr), "LTE": adam(o.lr_lte)},
                               lambda params: {k: k for k in params})
  d_tx = optax.adam(o.lr_dis, b1=0.0, b2=0.9, eps=o.eps)
  return g_tx, d_tx


def example_inputs() -> list[jnp.ndarray]:
  """(lr, lrsr, ref, refsr) zeros: parameter shapes do not depend on image sizes, and tiny
  inputs keep initialisation and shape inference cheap."""
  return [jnp.zeros(s) for s in ((1, 4, 4, 3), (1, 16, 16, 3), (1, 16, 16, 3), (1, 16, 16, 3))]


def init_vgg_params(config: ml_collections.ConfigDict, key: jax.Array) -> Params:
  """Random VGG19 (up to relu5_1) parameters; pretrained ones come from `convert`."""
  return jax.jit(build_vgg(config).init)(key, jnp.zeros((1, 16, 16, 3)))["params"]


def create_train_state(config: ml_collections.ConfigDict, vgg_params: Params, steps_per_epoch: int,
                       key: Optional[jax.Array] = None) -> TrainState:
  """Fresh state: PyTorch-default MainNet and D, the LTE initialised from `vgg_params` as the
  reference initialises it from ImageNet VGG19, fresh optimiser states."""
  key = jax.random.PRNGKey(config.seed) if key is None else key
  g_key, d_key, key = jax.random.split(key, 3)
  model, disc = build_model(config.model), build_discriminator(config)
  g_params = jax.jit(model.init)(g_key, *example_inputs())["params"]
  g_params = flax.core.unfreeze(g_params)
  for name in g_params["LTE"]:
    if name in vgg_params:
      g_params["LTE"][name] = jax.tree_util.tree_map(jnp.array, vgg_params[name])
  size = disc.in_size
  d_params = jax.jit(disc.init)(d_key, jnp.zeros((1, size, size, 3)))["params"]
  g_tx, d_tx = make_optimizers(config, steps_per_epoch)
  return TrainState(step=jnp.zeros((), jnp.int32), g_params=g_params, d_params=d_params,
                    g_opt_state=g_tx.init(g_params), d_opt_state=d_tx.init(d_params), key=key)


def _global_norm(tree) -> jnp.ndarray:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(tree)))


def make_gradient_fn(config: ml_collections.ConfigDict, steps_per_epoch: int, *, warmup: bool,
                     axis_name: Optional[str] = None) -> Callable:
  """The iteration without the generator update: (state, batch, vgg_params, epsilons) ->
  (generator gradients, updated D params, updated D optimiser state, metrics).

  `epsilons` (gan_k, N) replaces the WGAN-GP interpolation factors drawn from the state's key
  (for reproducing stored reference draws); N is the local batch under `axis_name`.
  """
  model, disc, vgg = build_model(config.model), build_discriminator(config), build_vgg(config)
  _, d_tx = make_optimizers(config, steps_per_epoch)
  w = config.loss
  use_per = not warmup and w.per_w != 0
  use_tpl = not warmup and w.tpl_w != 0
  use_adv = not warmup and w.adv_w != 0

  def average(tree):
    return jax.lax.pmean(tree, axis_name) if axis_name else tree

  def draw_epsilons(key, local_batch):
    """Per-sample factors drawn for the global batch, so any sharding sees the same numbers."""
    if not axis_name:
      return jax.random.uniform(key, (w.gan_k, local_batch))
    devices = jax.lax.psum(1, axis_name)
    eps = jax.random.uniform(key, (w.gan_k, local_batch * devices))
    start = jax.lax.axis_index(axis_name) * local_batch
    return jax.lax.dynamic_slice_in_dim(eps, start, local_batch, axis=1)

  def gradient_fn(state: TrainState, batch: Batch, vgg_params: Params,
                  epsilons: Optional[jnp.ndarray] = None):
    lr, lrsr, ref, refsr, hr = (batch[k] for k in IMAGE_KEYS)
    _, step_key = jax.random.split(state.key)

    def forward(g_params):
      out = model.apply({"params": g_params}, lr, lrsr, ref, refsr)
      return out.sr, out.S, out.T_lv3, out.T_lv2, out.T_lv1

    outputs, backward = jax.vjp(forward, state.g_params)
    sr = outputs[0]
    metrics = {}

    d_params, d_opt_state = state.d_params, state.d_opt_state
    if use_adv and w.gan_k > 0:
      if epsilons is None:
        epsilons = draw_epsilons(step_key, sr.shape[0])
      fake = jax.lax.stop_gradient(sr)
      for k in range(w.gan_k):
        def d_loss(p, eps=epsilons[k]):
          apply = lambda x: disc.apply({"params": p}, x)
          return losses.wgan_gp_discriminator_loss(apply, fake, hr, eps, w.gp_lambda)

        (loss_d, aux), d_grads = jax.value_and_grad(d_loss, has_aux=True)(d_params)
        d_grads = average(d_grads)
        updates, d_opt_state = d_tx.update(d_grads, d_opt_state, d_params)
        d_params = optax.apply_updates(d_params, updates)
      metrics.update({"d/loss": loss_d, "d/real": jnp.mean(aux["d_real"]),
                      "d/fake": jnp.mean(aux["d_fake"]),
                      "d/gradient_penalty": aux["gradient_penalty"],
                      "grad_norm/d": _global_norm(d_grads)})

    def generator_loss(outputs):
      sr, s, t_lv3, t_lv2, t_lv1 = outputs
      terms = {"rec": losses.reconstruction_loss(sr, hr)}
      weights = {"rec": w.rec_w}
      if use_per:
        vgg_apply = lambda x: vgg.apply({"params": vgg_params}, x)
        terms["per"], weights["per"] = losses.perceptual_loss(vgg_apply, sr, hr), w.per_w
      if use_tpl:
        frozen = jax.lax.stop_gradient(state.g_params)
        lte_copy = lambda x: model.apply({"params": frozen}, x, method=TTSR.texture_features)
        terms["tpl"] = losses.texture_loss(lte_copy, sr, s, (t_lv3, t_lv2, t_lv1),
                                           w.tpl_use_S, w.tpl_type)
        weights["tpl"] = w.tpl_w
      if use_adv:
        d_apply = lambda x: disc.apply({"params": d_params}, x)
        terms["adv"], weights["adv"] = losses.generator_adversarial_loss(d_apply, sr), w.adv_w
      total = 0.0
      for name, value in terms.items():  # the reference's order: rec, per, tpl, adv
        total = total + weights[name] * value
      return total, (terms, weights)

    (total, (terms, weights)), d_outputs = jax.value_and_grad(generator_loss, has_aux=True)(outputs)
    (g_grads,) = backward(d_outputs)
    g_grads = average(g_grads)
    for name, value in terms.items():
      metrics[f"loss/{name}"] = value
      metrics[f"loss/{name}_weighted"] = weights[name] * value
    metrics["loss/total"] = total
    metrics["grad_norm/g"] = _global_norm(g_grads)
    return g_grads, d_params, d_opt_state, average(metrics)

  return gradient_fn


def make_train_step(config: ml_collections.ConfigDict, steps_per_epoch: int, *, warmup: bool,
                    axis_name: Optional[str] = None) -> Callable:
  """(state, batch, vgg_params[, epsilons]) -> (new state, metrics); jit it with donated state."""
  gradient_fn = make_gradient_fn(config, steps_per_epoch, warmup=warmup, axis_name=axis_name)
  g_tx, _ = make_optimizers(config, steps_per_epoch)
  o = config.optim

  def train_step(state: TrainState, batch: Batch, vgg_params: Params,
                 epsilons: Optional[jnp.ndarray] = None) -> tuple[TrainState, Metrics]:
    g_grads, d_params, d_opt_state, metrics = gradient_fn(state, batch, vgg_params, epsilons)
    updates, g_opt_state = g_tx.update(g_grads, state.g_opt_state, state.g_params)
    g_params = optax.apply_updates(state.g_params, updates)
    factor = lr_factor(o, state.step, steps_per_epoch, config.num_init_epochs)
    metrics.update({"lr/main": o.lr * factor, "lr/lte": o.lr_lte * factor,
                    "lr/d": jnp.asarray(o.lr_dis, jnp.float32)})
    key, _ = jax.random.split(state.key)
    new_state = state.replace(step=state.step + 1, g_params=g_params, d_params=d_params,
                              g_opt_state=g_opt_state, d_opt_state=d_opt_state, key=key)
    return new_state, metrics

  return train_step

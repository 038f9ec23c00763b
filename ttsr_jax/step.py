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
from ttsr_jax.models import precision
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


def build_model(model_config: ml_collections.ConfigDict, loop_backward: bool = False) -> TTSR:
  """`loop_backward`: differentiated inside a loop on XLA:CPU (see layers.conv2d).

  Raises:
    ValueError: an unknown `precision` policy.
  """
  precision.check(model_config.precision)
  return TTSR(n_feats=model_config.n_feats, num_res_blocks=tuple(model_config.num_res_blocks),
              res_scale=model_config.res_scale, lte_reduce_lv3=model_config.lte_reduce_lv3,
              search_chunk_size=model_config.search_chunk_size,
              precision=model_config.precision, remat=model_config.remat,
              loop_backward=loop_backward)


def build_discriminator(config: ml_collections.ConfigDict,
                        loop_backward: bool = False) -> Discriminator:
  dtype = precision.compute_dtype(config.model.precision, "discriminator")
  return Discriminator(in_size=4 * config.train_crop_size, dtype=dtype,
                       loop_backward=loop_backward)


def build_vgg(config: ml_collections.ConfigDict, loop_backward: bool = False) -> VGG19:
  dtype = precision.compute_dtype(config.model.precision, "vgg")
  return VGG19(dtype=dtype, loop_backward=loop_backward)


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


def split_microbatches(tree: Any, count: int) -> Any:
  """(B, ...) leaves -> (count, B // count, ...). Microbatch k holds rows k, k + count, ..., so
  when B is split over devices in contiguous blocks every microbatch takes an equal share of each
  device's rows and no data moves between devices."""
  return jax.tree_util.tree_map(
      lambda x: x.reshape(x.shape[0] // count, count, *x.shape[1:]).swapaxes(0, 1), tree)


def merge_microbatches(tree: Any) -> Any:
  """The inverse of `split_microbatches`."""
  return jax.tree_util.tree_map(
      lambda x: x.swapaxes(0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:]), tree)


def _microbatch_mean(fn: Callable, inputs: Any, count: int) -> Any:
  """The mean over `count` microbatches of `fn(microbatch)` (a tree of arrays), computed one
  microbatch after the other so that only one microbatch's activations are alive at a time."""
  if count == 1:
    return fn(inputs)
  microbatches = split_microbatches(inputs, count)
  first = jax.tree_util.tree_map(lambda x: x[0], microbatches)
  zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(fn, first))

  def accumulate(total, microbatch):
    return jax.tree_util.tree_map(jnp.add, total, fn(microbatch)), None

  total, _ = jax.lax.scan(accumulate, zeros, microbatches)
  return jax.tree_util.tree_map(lambda x: x / count, total)


def make_gradient_fn(config: ml_collections.ConfigDict, steps_per_epoch: int, *, warmup: bool,
                     axis_name: Optional[str] = None) -> Callable:
  """The iteration without the generator update: (state, batch, vgg_params, epsilons) ->
  (generator gradients, updated D params, updated D optimiser state, metrics).

  `epsilons` (gan_k, N) replaces the WGAN-GP interpolation factors drawn from the state's key
  (for reproducing stored reference draws); N is the local batch under `axis_name`.

  With `config.microbatches` = M > 1 the (local) batch is processed in M sequential
  microbatches whose gradients are averaged: the same gradients (every loss is a mean over
  samples), with about 1/M of the activation memory. When the adversarial loss is on, the
  discriminator must see the whole batch's sr before the generator's loss, so the generator's
  forward pass then runs twice (once without gradients).
  """
  w = config.loss
  count = config.microbatches
  # Microbatches run in a loop, where XLA:CPU's own backward convolutions are slow.
  loop_backward = count > 1 and jax.default_backend() == "cpu"
  model = build_model(config.model, loop_backward)
  disc = build_discriminator(config, loop_backward)
  vgg = build_vgg(config, loop_backward)
  _, d_tx = make_optimizers(config, steps_per_epoch)
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

  def forward(g_params, batch):
    out = model.apply({"params": g_params}, *(batch[k] for k in ("lr", "lrsr", "ref", "refsr")))
    return out.sr, out.S, out.T_lv3, out.T_lv2, out.T_lv1

  def gradient_fn(state: TrainState, batch: Batch, vgg_params: Params,
                  epsilons: Optional[jnp.ndarray] = None):
    local_batch = batch["hr"].shape[0]
    if local_batch % count:
      raise ValueError(f"config.microbatches {count} does not divide the per-device batch "
                       f"{local_batch}")
    _, step_key = jax.random.split(state.key)
    metrics = {}

    # With one microbatch the forward pass that feeds D is also the one the generator's
    # gradient flows back through.
    forward_vjp = jax.vjp(lambda p: forward(p, batch), state.g_params) if count == 1 else None

    d_params, d_opt_state = state.d_params, state.d_opt_state
    if use_adv and w.gan_k > 0:
      if epsilons is None:
        epsilons = draw_epsilons(step_key, local_batch)
      if forward_vjp:
        sr = forward_vjp[0][0]
      else:
        sr = merge_microbatches(jax.lax.map(lambda b: forward(state.g_params, b)[0],
                                            split_microbatches(batch, count)))
      d_inputs = {"fake": jax.lax.stop_gradient(sr), "real": batch["hr"], "eps": epsilons.T}
      for k in range(w.gan_k):
        def d_gradients(inputs, p=d_params, k=k):
          def d_loss(p):
            apply = lambda x: disc.apply({"params": p}, x)
            return losses.wgan_gp_discriminator_loss(apply, inputs["fake"], inputs["real"],
                                                     inputs["eps"][:, k], w.gp_lambda)
          (loss_d, aux), grads = jax.value_and_grad(d_loss, has_aux=True)(p)
          return grads, {"d/loss": loss_d, "d/real": jnp.mean(aux["d_real"]),
                         "d/fake": jnp.mean(aux["d_fake"]),
                         "d/gradient_penalty": aux["gradient_penalty"]}

        d_grads, d_metrics = _microbatch_mean(d_gradients, d_inputs, count)
        d_grads = average(d_grads)
        updates, d_opt_state = d_tx.update(d_grads, d_opt_state, d_params)
        d_params = optax.apply_updates(d_params, updates)
      metrics.update(d_metrics)
      metrics["grad_norm/d"] = _global_norm(d_grads)

    weights = {"rec": w.rec_w}
    if use_per:
      weights["per"] = w.per_w
    if use_tpl:
      weights["tpl"] = w.tpl_w
    if use_adv:
      weights["adv"] = w.adv_w

    def generator_loss(outputs, hr):
      sr, s, t_lv3, t_lv2, t_lv1 = outputs
      terms = {"rec": losses.reconstruction_loss(sr, hr)}
      if use_per:
        vgg_apply = lambda x: vgg.apply({"params": vgg_params}, x)
        terms["per"] = losses.perceptual_loss(vgg_apply, sr, hr)
      if use_tpl:
        frozen = jax.lax.stop_gradient(state.g_params)
        lte_copy = lambda x: model.apply({"params": frozen}, x, method=TTSR.texture_features)
        terms["tpl"] = losses.texture_loss(lte_copy, sr, s, (t_lv3, t_lv2, t_lv1),
                                           w.tpl_use_S, w.tpl_type)
      if use_adv:
        d_apply = lambda x: disc.apply({"params": d_params}, x)
        terms["adv"] = losses.generator_adversarial_loss(d_apply, sr)
      total = 0.0
      for name, value in terms.items():  # the reference's order: rec, per, tpl, adv
        total = total + weights[name] * value
      return total, terms

    def generator_gradients(batch, forward_vjp=None):
      outputs, backward = forward_vjp or jax.vjp(lambda p: forward(p, batch), state.g_params)
      (total, terms), d_outputs = jax.value_and_grad(generator_loss, has_aux=True)(
          outputs, batch["hr"])
      (grads,) = backward(d_outputs)
      return grads, (total, terms)

    if forward_vjp:
      g_grads, (total, terms) = generator_gradients(batch, forward_vjp)
    else:
      g_grads, (total, terms) = _microbatch_mean(generator_gradients, batch, count)
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

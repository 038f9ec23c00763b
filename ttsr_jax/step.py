"""Train state, optimisers and the jitted generator/discriminator iteration (reference
`trainer.py`).

One iteration, in the reference's order: generator forward; `gan_k` WGAN-GP discriminator
updates on the detached sr; the generator's loss with the *updated* discriminator; the generator
update. Warm-up iterations use the weighted L1 term alone and leave the discriminator untouched.

The step is a pure function of an explicit `TrainState`. Under `jax.jit` with a batch sharded
over a mesh axis the means are global and XLA inserts the reductions; under `pmap`/`shard_map`
pass `axis_name` and the step averages gradients and metrics over that axis itself.
"""

import dataclasses
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import optax

from data_pipeline import samples
from ttsr_jax import losses
from ttsr_jax import specs
from ttsr_jax.models import layers
from ttsr_jax.models import precision
from ttsr_jax.models.discriminator import Discriminator
from ttsr_jax.models.ttsr import TTSR, TTSROutput
from ttsr_jax.models.vgg import VGG19

Params = Any
Batch = dict[str, jnp.ndarray]
Metrics = dict[str, jnp.ndarray]


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray  # iterations done, warm-up included
  g_params: Params  # {'LTE': ..., 'MainNet': ...}
  d_params: Params
  g_opt_state: optax.OptState
  d_opt_state: optax.OptState
  key: jnp.ndarray  # raw uint32 PRNG key (plain array, so Orbax stores it as is)


def build_discriminator(spec: specs.TrainSpec) -> Discriminator:
  dtype = precision.compute_dtype(spec.model.precision, "discriminator")
  return Discriminator(in_size=4 * spec.train_crop_size, dtype=dtype)


def build_vgg(model: specs.ModelSpec) -> VGG19:
  return VGG19(dtype=precision.compute_dtype(model.precision, "vgg"))


@dataclasses.dataclass(frozen=True)
class Networks:
  """The modules one training iteration applies."""

  model: TTSR
  disc: Discriminator
  vgg: VGG19


def build_networks(spec: specs.TrainSpec) -> Networks:
  return Networks(spec.model.build(), build_discriminator(spec), build_vgg(spec.model))


def model_inputs(batch: Batch) -> tuple[jnp.ndarray, ...]:
  """(lr, lrsr, ref, refsr) of a batch, in the order the model takes them."""
  return tuple(batch[k] for k in samples.MODEL_INPUT_KEYS)


def lr_factor(optim: specs.OptimSpec, step: jnp.ndarray, steps_per_epoch: int,
              num_init_epochs: int) -> jnp.ndarray:
  """StepLR as the reference steps it: once at the start of every main epoch, never in warm-up.

  Main epoch E (1-based) trains with gamma ** floor(E / decay); warm-up epochs with factor 1.
  """
  main_step = step - num_init_epochs * steps_per_epoch
  epoch = jnp.where(main_step >= 0, main_step // steps_per_epoch + 1, 0)
  return jnp.asarray(optim.gamma, jnp.float32) ** jnp.floor(epoch / optim.decay)


def make_optimizers(spec: specs.TrainSpec, steps_per_epoch: int
                    ) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
  """Generator Adam with MainNet and LTE learning rates on one schedule; discriminator Adam."""
  o = spec.optim

  def adam(base_lr):
    schedule = lambda count: base_lr * lr_factor(o, count, steps_per_epoch, spec.num_init_epochs)
    return optax.adam(schedule, b1=o.beta1, b2=o.beta2, eps=o.eps)

  g_tx = optax.multi_transform({"MainNet": adam(o.lr), "LTE": adam(o.lr_lte)},
                               lambda params: {k: k for k in params})
  d_tx = optax.adam(o.lr_dis, b1=0.0, b2=0.9, eps=o.eps)
  return g_tx, d_tx


def example_inputs() -> list[jnp.ndarray]:
  """(lr, lrsr, ref, refsr) zeros: parameter shapes do not depend on image sizes, and tiny
  inputs keep initialisation and shape inference cheap."""
  return [jnp.zeros(s) for s in ((1, 4, 4, 3), (1, 16, 16, 3), (1, 16, 16, 3), (1, 16, 16, 3))]


def init_vgg_params(model: specs.ModelSpec, key: jax.Array) -> Params:
  """Random VGG19 (up to relu5_1) parameters; pretrained ones come from `convert`."""
  return jax.jit(build_vgg(model).init)(key, jnp.zeros((1, 16, 16, 3)))["params"]


def create_train_state(spec: specs.TrainSpec, vgg_params: Params, steps_per_epoch: int,
                       key: Optional[jax.Array] = None) -> TrainState:
  """Fresh state: PyTorch-default MainNet and D, the LTE initialised from `vgg_params` as the
  reference initialises it from ImageNet VGG19, fresh optimiser states."""
  key = jax.random.PRNGKey(spec.seed) if key is None else key
  g_key, d_key, key = jax.random.split(key, 3)
  model, disc = spec.model.build(), build_discriminator(spec)
  g_params = jax.jit(model.init)(g_key, *example_inputs())["params"]
  g_params = flax.core.unfreeze(g_params)
  for name in g_params["LTE"]:
    if name in vgg_params:
      g_params["LTE"][name] = jax.tree_util.tree_map(jnp.array, vgg_params[name])
  size = disc.in_size
  d_params = jax.jit(disc.init)(d_key, jnp.zeros((1, size, size, 3)))["params"]
  g_tx, d_tx = make_optimizers(spec, steps_per_epoch)
  return TrainState(step=jnp.zeros((), jnp.int32), g_params=g_params, d_params=d_params,
                    g_opt_state=g_tx.init(g_params), d_opt_state=d_tx.init(d_params), key=key)


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


def microbatch_mean(fn: Callable, inputs: Any, count: int) -> Any:
  """The mean over `count` microbatches of `fn(microbatch)` (a tree of arrays), computed one
  microbatch after the other so that only one microbatch's activations are alive at a time."""
  if count == 1:
    return fn(inputs)
  microbatches = split_microbatches(inputs, count)
  first = jax.tree_util.tree_map(lambda x: x[0], microbatches)
  with layers.loop_body():
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype),
                                   jax.eval_shape(fn, first))

    def accumulate(total, microbatch):
      return jax.tree_util.tree_map(jnp.add, total, fn(microbatch)), None

    total, _ = jax.lax.scan(accumulate, zeros, microbatches)
  return jax.tree_util.tree_map(lambda x: x / count, total)


def draw_epsilons(key: jax.Array, gan_k: int, local_batch: int,
                  axis_name: Optional[str] = None) -> jnp.ndarray:
  """WGAN-GP interpolation factors (gan_k, local_batch). They are drawn for the global batch and
  each device takes its rows, so every sharding of the batch sees the same numbers."""
  if not axis_name:
    return jax.random.uniform(key, (gan_k, local_batch))
  devices = jax.lax.psum(1, axis_name)
  eps = jax.random.uniform(key, (gan_k, local_batch * devices))
  start = jax.lax.axis_index(axis_name) * local_batch
  return jax.lax.dynamic_slice_in_dim(eps, start, local_batch, axis=1)


def loss_weights(loss: specs.LossSpec, warmup: bool) -> dict[str, float]:
  """The generator's active loss terms and their weights, in the reference's order (rec, per,
  tpl, adv); warm-up iterations use the reconstruction loss alone."""
  weights = {"rec": loss.rec_w}
  if not warmup:
    weights.update({name: getattr(loss, f"{name}_w") for name in ("per", "tpl", "adv")
                    if getattr(loss, f"{name}_w") != 0})
  return weights


@dataclasses.dataclass(frozen=True)
class Iteration:
  """What one training iteration is made of, fixed when the step is built (`make_iteration`).

  `axis_name` is None under `jax.jit` over a mesh, where the batch means are global and XLA
  inserts the reductions; under `pmap`/`shard_map` it names the mapped axis, and the iteration
  averages gradients and metrics over it itself.
  """

  nets: Networks
  g_tx: optax.GradientTransformation
  d_tx: optax.GradientTransformation
  spec: specs.TrainSpec
  steps_per_epoch: int
  weights: dict[str, float]  # `loss_weights` of this kind of iteration
  axis_name: Optional[str] = None

  @property
  def adversarial(self) -> bool:
    """Whether the discriminator takes its WGAN-GP updates in this iteration."""
    return "adv" in self.weights and self.spec.loss.gan_k > 0

  def mean_over_devices(self, tree: Any) -> Any:
    """The mean over the devices of `axis_name` (pmap style); `tree` as is under jit."""
    return jax.lax.pmean(tree, self.axis_name) if self.axis_name else tree


def make_iteration(spec: specs.TrainSpec, steps_per_epoch: int, *, warmup: bool,
                   axis_name: Optional[str] = None) -> Iteration:
  if spec.microbatches < 1:
    raise ValueError(f"microbatches {spec.microbatches}: resolve 0 (per machine) with "
                     "sharding.resolve_microbatches first")
  g_tx, d_tx = make_optimizers(spec, steps_per_epoch)
  return Iteration(build_networks(spec), g_tx, d_tx, spec, steps_per_epoch,
                   loss_weights(spec.loss, warmup), axis_name)


def discriminator_gradients(disc: Discriminator, d_params: Params, fake: jnp.ndarray,
                            real: jnp.ndarray, epsilon: jnp.ndarray, gp_lambda: float
                            ) -> tuple[tuple[jnp.ndarray, dict[str, jnp.ndarray]], Params]:
  """((WGAN-GP loss, its per-sample terms), gradients with respect to `d_params`)."""
  def d_loss(p):
    apply = lambda x: disc.apply({"params": p}, x)
    return losses.wgan_gp_discriminator_loss(apply, fake, real, epsilon, gp_lambda)
  return jax.value_and_grad(d_loss, has_aux=True)(d_params)


def discriminator_update(it: Iteration, d_params: Params, d_opt_state: optax.OptState,
                         fake: jnp.ndarray, real: jnp.ndarray, epsilon: jnp.ndarray
                         ) -> tuple[Params, optax.OptState, Params, Metrics]:
  """One WGAN-GP step of D on (fake, real) with interpolation factors `epsilon` (N,).

  Returns the new D parameters and optimiser state, the (averaged) gradients and the loss terms.
  """
  def d_gradients(inputs):
    (loss_d, aux), grads = discriminator_gradients(it.nets.disc, d_params, inputs["fake"],
                                                   inputs["real"], inputs["eps"],
                                                   it.spec.loss.gp_lambda)
    return grads, {"d/loss": loss_d, "d/real": jnp.mean(aux["d_real"]),
                   "d/fake": jnp.mean(aux["d_fake"]),
                   "d/gradient_penalty": aux["gradient_penalty"]}

  inputs = {"fake": fake, "real": real, "eps": epsilon}
  grads, metrics = microbatch_mean(d_gradients, inputs, it.spec.microbatches)
  grads = it.mean_over_devices(grads)
  updates, d_opt_state = it.d_tx.update(grads, d_opt_state, d_params)
  return optax.apply_updates(d_params, updates), d_opt_state, grads, metrics


def generate(model: TTSR, g_params: Params, batch: Batch,
             index: Optional[jnp.ndarray] = None) -> TTSROutput:
  """The generator's forward pass on `batch`. `index` is the search's hard-attention index when
  an earlier forward pass of the same parameters and batch found it."""
  return model.apply({"params": g_params}, *model_inputs(batch), index)


def generator_forward(model: TTSR, g_params: Params, batch: Batch,
                      index: Optional[jnp.ndarray] = None) -> tuple[jnp.ndarray, ...]:
  """(sr, S, T_lv3, T_lv2, T_lv1) of `generate`: what the generator's losses read."""
  out = generate(model, g_params, batch, index)
  return out.sr, out.S, out.T_lv3, out.T_lv2, out.T_lv1


def generator_loss(it: Iteration, g_params: Params, vgg_params: Params, d_params: Params,
                   outputs: tuple[jnp.ndarray, ...], hr: jnp.ndarray
                   ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """The weighted total of the iteration's loss terms for the generator's `outputs`, and the
  unweighted terms. `g_params` feed only the texture loss's frozen LTE copy."""
  nets, loss, weights = it.nets, it.spec.loss, it.weights
  sr, s, t_lv3, t_lv2, t_lv1 = outputs
  terms = {"rec": losses.reconstruction_loss(sr, hr)}
  if "per" in weights:
    vgg_apply = lambda x: nets.vgg.apply({"params": vgg_params}, x)
    terms["per"] = losses.perceptual_loss(vgg_apply, sr, hr)
  if "tpl" in weights:
    frozen = jax.lax.stop_gradient(g_params)
    lte_copy = lambda x: nets.model.apply({"params": frozen}, x, method=TTSR.texture_features)
    terms["tpl"] = losses.texture_loss(lte_copy, sr, s, (t_lv3, t_lv2, t_lv1), loss.tpl_use_S,
                                       loss.tpl_type)
  if "adv" in weights:
    d_apply = lambda x: nets.disc.apply({"params": d_params}, x)
    terms["adv"] = losses.generator_adversarial_loss(d_apply, sr)
  total = 0.0
  for name, value in terms.items():
    total = total + weights[name] * value
  return total, terms


def generator_gradients(it: Iteration, g_params: Params, vgg_params: Params, d_params: Params,
                        batch: Batch, forward_vjp: Optional[tuple[Any, Callable]] = None,
                        index: Optional[jnp.ndarray] = None
                        ) -> tuple[Params, tuple[jnp.ndarray, dict[str, jnp.ndarray]]]:
  """Gradients of `generator_loss` with respect to `g_params`, and (total, terms).

  `forward_vjp` reuses a `jax.vjp` of `generator_forward` over the whole batch (one microbatch)
  that was already run to feed the discriminator; `index` (N, h*w), the hard-attention index
  that the microbatched forward pass feeding the discriminator found, spares the microbatches'
  forward passes the search.
  """
  def gradients(inputs, forward_vjp=None):
    batch, index = inputs
    outputs, backward = forward_vjp or jax.vjp(
        lambda p: generator_forward(it.nets.model, p, batch, index), g_params)
    loss = lambda outputs: generator_loss(it, g_params, vgg_params, d_params, outputs,
                                          batch["hr"])
    (total, terms), d_outputs = jax.value_and_grad(loss, has_aux=True)(outputs)
    (grads,) = backward(d_outputs)
    return grads, (total, terms)

  if forward_vjp:
    return gradients((batch, None), forward_vjp)
  return microbatch_mean(gradients, (batch, index), it.spec.microbatches)


def d_updates_and_g_gradients(it: Iteration, state: TrainState, batch: Batch, vgg_params: Params,
                              epsilons: Optional[jnp.ndarray]
                              ) -> tuple[Params, Params, optax.OptState, Metrics]:
  """The iteration up to the generator's update: (generator gradients, updated D params, updated
  D optimiser state, metrics).

  The discriminator takes its `gan_k` WGAN-GP steps on the detached sr first, and the
  generator's adversarial term then sees the updated D, as in the reference. `epsilons`
  (gan_k, N) are their interpolation factors (N: the local batch under `axis_name`); unused
  when the iteration is not adversarial.

  With `microbatches` = M > 1 the (local) batch runs as M sequential microbatches whose gradients
  are averaged: the same gradients (every loss is a mean over samples) with about 1/M of the
  activation memory. D must see the whole batch's sr before the generator's loss, so the
  generator's forward pass then runs twice (once without gradients); the second takes the
  first's hard-attention index instead of searching again.
  """
  count = it.spec.microbatches
  metrics = {}
  # With one microbatch, the forward pass that feeds D is also the one the generator's
  # gradient flows back through.
  forward_vjp = (jax.vjp(lambda p: generator_forward(it.nets.model, p, batch), state.g_params)
                 if count == 1 else None)

  d_params, d_opt_state = state.d_params, state.d_opt_state
  index = None
  if it.adversarial:
    if forward_vjp:
      sr = forward_vjp[0][0]
    else:
      def sr_and_index(microbatch):
        out = generate(it.nets.model, state.g_params, microbatch)
        return out.sr, out.index

      with layers.loop_body():
        sr, index = merge_microbatches(jax.lax.map(sr_and_index,
                                                   split_microbatches(batch, count)))
    fake = jax.lax.stop_gradient(sr)
    for k in range(it.spec.loss.gan_k):
      d_params, d_opt_state, d_grads, d_metrics = discriminator_update(
          it, d_params, d_opt_state, fake, batch["hr"], epsilons[k])
    metrics.update(d_metrics)
    metrics["grad_norm/d"] = optax.tree.norm(d_grads)

  g_grads, (total, terms) = generator_gradients(it, state.g_params, vgg_params, d_params, batch,
                                                forward_vjp, index)
  g_grads = it.mean_over_devices(g_grads)
  for name, value in terms.items():
    metrics[f"loss/{name}"] = value
    metrics[f"loss/{name}_weighted"] = it.weights[name] * value
  metrics["loss/total"] = total
  metrics["grad_norm/g"] = optax.tree.norm(g_grads)
  return g_grads, d_params, d_opt_state, it.mean_over_devices(metrics)


def update(it: Iteration, state: TrainState, batch: Batch, vgg_params: Params,
           epsilons: Optional[jnp.ndarray]) -> tuple[TrainState, Metrics]:
  """One iteration with given WGAN-GP factors `epsilons` (`d_updates_and_g_gradients`): the
  state with the step counted, D and G updated; its key is left for the caller to advance."""
  g_grads, d_params, d_opt_state, metrics = d_updates_and_g_gradients(it, state, batch,
                                                                      vgg_params, epsilons)
  updates, g_opt_state = it.g_tx.update(g_grads, state.g_opt_state, state.g_params)
  g_params = optax.apply_updates(state.g_params, updates)
  o = it.spec.optim
  factor = lr_factor(o, state.step, it.steps_per_epoch, it.spec.num_init_epochs)
  metrics.update({"lr/main": o.lr * factor, "lr/lte": o.lr_lte * factor,
                  "lr/d": jnp.asarray(o.lr_dis, jnp.float32)})
  return state.replace(step=state.step + 1, g_params=g_params, d_params=d_params,
                       g_opt_state=g_opt_state, d_opt_state=d_opt_state), metrics


def make_train_step(spec: specs.TrainSpec, steps_per_epoch: int, *, warmup: bool,
                    axis_name: Optional[str] = None) -> Callable:
  """(state, batch, vgg_params) -> (new state, metrics); jit it with donated state
  (`sharding.jit_train_step`), or map it over devices with `axis_name` set (`jax.pmap`,
  `sharding.shard_map_train_step`).

  The state's key is split here, once per step: one half draws the step's WGAN-GP factors, the
  other is the next step's key.
  """
  it = make_iteration(spec, steps_per_epoch, warmup=warmup, axis_name=axis_name)

  def train_step(state: TrainState, batch: Batch, vgg_params: Params
                 ) -> tuple[TrainState, Metrics]:
    next_key, step_key = jax.random.split(state.key)
    epsilons = None
    if it.adversarial:
      epsilons = draw_epsilons(step_key, spec.loss.gan_k, batch["hr"].shape[0], axis_name)
    state, metrics = update(it, state, batch, vgg_params, epsilons)
    return state.replace(key=next_key), metrics

  return train_step

"""The xAR task (config.task = "xar"): flow matching on latent tokens with Noisy Context Learning.

The state is XarTrainState (params, EMA params, optimizer state, RNG); config.json records
num_classes and num_train beside the config; the final metrics are {"train/final_loss"}; a restored
run's variables are the EMA params (ema=False: the raw ones). tokax.sample samples a workdir.
The model is config data: XAR(**config.model) with token_dim and grid_size from config.latent and
num_classes from the data.

config.latent: dict(name="patch", patch=4) (grey pixel patches), or a trained tokax tokenizer:
  dict(name="tokenizer", workdir=<a tokenizer run's --workdir>, ema=True, sample=True, scale=None, step=None)
The tokenizer run is restored from its config.json and checkpoint (EMA weights unless ema=False; its
latest checkpoint, or `step`), at the image size it trained at (config.data.image_size must equal its
config.model.image_size). Training encodes each batch with it inside the step (its variables are a
frozen argument of the jitted step) as scale * a posterior sample of the KL autoencoder (sample=True, as
xAR/MAR train on posterior.sample() * 0.2325; False: the posterior mean), or scale * a discrete tokenizer's
quantized embeddings; samples decode through the tokenizer's decoder. The scale: config.latent.scale
if set, else the one the tokenizer run recorded at its end (the KL autoencoder's stats/latent_scale,
1 / std of its latent samples of 256 training images), else (a discrete tokenizer, or a KL run that
has not finished) 1 / std of the latents of this run's first 256 training images (to 4 significant
digits, so that a resume on other hardware measures the same). config.json records
what was used under latent: scale, scale_source, step (the tokenizer checkpoint), grid, channels,
sample; a restored run and tokax.sample read them back, and a resume on a tokenizer that changed since
is refused (workdir.ConfigChangedError naming latent.step / latent.scale).

Data: config.data.name is an embedded dataset (built at data.image_size) or "tfds:<name>" /
"folder:<root>" through tokax.data.pipeline with data.preprocess (train) and preprocess_eval (the
scale images), ending in float32 (S, S, 3) images in [0, 1]; data.train_split, data.num_train (the
first examples), data.num_classes where the source does not say.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from tokax.data import offline, pipeline
from tokax.models.latent import Latent, build_latent, tokenizer_grid, tokenizer_latent
from tokax.models.xar import XAR, xar_loss
from tokax.tokenizers.vae import KLAutoencoder, latent_scale_from
from tokax.train import checkpoint
from tokax.train.config_utils import durations_from_config, steps
from tokax.train.model import from_fields
from tokax.train.tasks import base
from tokax.train.tasks import tokenizer as tokenizer_task

NAME = "xar"
LATENT_SCALE_EXAMPLES = tokenizer_task.LATENT_SCALE_EXAMPLES  # training images the scale is measured on
SCALE_BATCH = 64  # images per encoder call while measuring the scale
_LATENT_SALT = 0x4C41544E  # the posterior sample's key: fold_in(step key, salt), so xar_loss's draws stay put


@flax.struct.dataclass
class XarTrainState:
  """step () int32; params / ema_params the XAR variables; opt_state of the AdamW chain; rng (2,) uint32
  raw key data of the run's base key (step s folds in s, so a restored run draws the same noise)."""
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array


# --- the tokenizer latent -------------------------------------------------------------------------

def tokenizer_config(workdir: str, image_size: int | None = None) -> ml_collections.ConfigDict:
  """The config.json of the tokenizer run in `workdir` (config.latent.workdir), checked: a tokenizer run, trained
  at `image_size` px (config.data.image_size) when given. Raises ValueError (base.RunError) naming the fix."""
  field = "config.latent.workdir"
  if not workdir:
    raise base.RunError(f"{field} is unset: set it to the --workdir of a tokenizer run (python -m tokax.train "
                        "--config configs/imagenet_tokenizer.py --workdir DIR), or use config.latent.name='patch'")
  try:
    config = base.read_config(workdir)
  except base.RunError as e:
    raise base.RunError(f"{field}: {e}. Point it at the --workdir of a tokenizer run") from None
  task = config.get("task", "classifier")
  if task != tokenizer_task.NAME:
    raise base.RunError(f"{field}={workdir!r} holds a {task!r} run (its config.json has task={task!r}), not a "
                        "tokenizer run: the xAR latent is a trained tokenizer's; point config.latent.workdir at a "
                        "run of config.task='tokenizer' (e.g. python -m tokax.train --config "
                        "configs/imagenet_tokenizer.py --workdir DIR)")
  trained = int(config.model.image_size)
  if image_size is not None and trained != int(image_size):
    raise ValueError(f"config.data.image_size={image_size} but the tokenizer run in {workdir!r} was trained on "
                     f"{trained} px images (its config.model.image_size); set config.data.image_size={trained} "
                     f"(and a data.preprocess that crops to {trained}), or train a tokenizer at {image_size} px")
  return config


def load_tokenizer(workdir: str, *, image_size: int | None = None, step: int | None = None,
                   ema: bool = True) -> base.Run:
  """The tokenizer run of `workdir` at checkpoint `step` (None: its latest), on this process's first device.

  Args:
    workdir: config.latent.workdir.
    image_size: config.data.image_size, checked against the run's.
    step: config.latent.step (what a saved xAR run recorded).
    ema: the EMA weights (the tokenizer task's evaluation weights) or the raw ones.
  """
  config = tokenizer_config(workdir, image_size)
  directory = os.path.join(workdir, "checkpoints")
  saved = checkpoint.check_directory(directory)
  if not saved:
    raise base.RunError(f"config.latent.workdir={workdir!r} holds a tokenizer run but no checkpoint under "
                        f"{directory}: it stopped before its first save; train it (to its end: the final checkpoint "
                        "records the latent scale)")
  step = saved[-1] if step is None else int(step)
  if step not in saved:
    raise base.RunError(f"config.latent.step={step}: the tokenizer run in {workdir!r} has checkpoints {saved} only; "
                        "this xAR run was trained on that step's latents. Put that checkpoint back, or train the "
                        "xAR afresh on the tokenizer as it is now")
  target = tokenizer_task.target(config)
  shapes = jax.eval_shape(target.init_fn, target.init_rng)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  manager = checkpoint.make_manager(directory, max_to_keep=1_000_000)  # never deletes: it saves nothing
  try:
    state, _ = checkpoint.restore(manager, step, checkpoint.abstract_state(shapes, jax.tree.map(lambda _: device,
                                                                                                 shapes)))
  finally:
    manager.close()
  return base.Run(workdir=workdir, task=tokenizer_task.NAME, config=config, model=target.model,
                  variables=tokenizer_task.variables(state, ema=ema), step=int(state.step), state=state)


def measure_scale(latent: Latent, images: np.ndarray, *, batch_size: int = SCALE_BATCH) -> float:
  """1 / std of latent.sample over `images` (N, S, S, 3) (posterior draws with keys fold_in(key(0), batch))."""
  encode = jax.jit(lambda variables, x, rng: latent.bind(variables).sample(x, rng))
  latents = [encode(latent.variables, jnp.asarray(images[i:i + batch_size]), jax.random.fold_in(jax.random.key(0), i))
             for i in range(0, len(images), batch_size)]
  return float(latent_scale_from(jnp.concatenate(latents)))


def resolve_latent(config: ml_collections.ConfigDict, scale_images: Callable[[], np.ndarray]
                   ) -> tuple[Latent, dict[str, Any]]:
  """The Latent of config.latent and what config.json records of it ({} for patches; see the module docstring).

  scale_images: () -> (N, S, S, 3) training images in [0, 1], called only when the scale must be measured.
  """
  spec, image_size = config.latent, config.data.image_size
  if spec.name != "tokenizer":
    return build_latent(spec.name, image_size=image_size, patch=spec.get("patch", 4)), {}
  run = load_tokenizer(spec.get("workdir"), image_size=image_size, step=spec.get("step"), ema=spec.get("ema", True))
  is_kl = isinstance(run.model, KLAutoencoder)
  sample = is_kl if spec.get("sample") is None else bool(spec.sample)
  scale, source = spec.get("scale"), "config.latent.scale"
  if scale is None and is_kl and run.step == run.config.total_steps:
    scale, source = float(run.variables["stats"]["latent_scale"]), "tokenizer run"
  elif scale is None:
    unit = tokenizer_latent(run.model, run.variables, image_size=image_size, scale=1.0, sample=sample)
    # 4 significant digits (as MAR's 0.2325): a resume measures again, maybe on other hardware, and must agree
    scale, source = float(f"{measure_scale(unit, scale_images()):.4g}"), "xar train images"
  if not (np.isfinite(scale) and scale > 0):
    raise ValueError(f"config.latent.scale={scale} ({source}): expected a finite number > 0 (MAR's KL-16: 0.2325)")
  latent = tokenizer_latent(run.model, run.variables, image_size=image_size, scale=scale, sample=sample)
  record = {"scale": float(scale), "scale_source": source, "step": run.step, "grid": latent.grid,
            "channels": latent.channels, "sample": sample}
  return latent, record


def latent_shape(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(G, C) of config.latent without restoring a tokenizer (a saved run's config.json records them)."""
  spec = config.latent
  if spec.name != "tokenizer":
    latent = build_latent(spec.name, image_size=config.data.image_size, patch=spec.get("patch", 4))
    return latent.grid, latent.channels
  if spec.get("grid") and spec.get("channels"):
    return int(spec.grid), int(spec.channels)
  tok_config = tokenizer_config(spec.get("workdir"), config.data.image_size)
  return tokenizer_grid(tokenizer_task.model_from_config(tok_config), config.data.image_size)


def latent_from_config(config: ml_collections.ConfigDict) -> Latent:
  """The Latent of config.latent (a saved run's: the tokenizer step and scale its config.json recorded)."""
  return resolve_latent(config, lambda: scale_images_of(config))[0]


def model_from_config(config: ml_collections.ConfigDict, num_classes: int) -> XAR:
  """XAR(**config.model) over the latent of config.latent, with num_classes outputs of the label embedding."""
  grid, channels = latent_shape(config)
  return from_fields(XAR, {**config.model, "token_dim": channels, "grid_size": grid, "num_classes": num_classes})


def lr_schedule(*, peak_lr: float, total_steps: int, warmup_steps: int, decay_steps: int,
                end_lr: float) -> optax.Schedule:
  """Linear warmup, constant, then a cosine to end_lr over the last `decay_steps` of `total_steps`.

  The official schedule's shape (warmup 100 / constant to 600 / cosine to 800 epochs), but driven
  by the configured length instead of hard-coded epochs.
  """
  if not 0 <= warmup_steps + decay_steps <= total_steps:
    raise ValueError(f"xar lr schedule: need warmup_steps + decay_steps <= total_steps; got "
                     f"{warmup_steps} + {decay_steps} > {total_steps}")
  constant_steps = total_steps - warmup_steps - decay_steps
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak_lr, max(warmup_steps, 1)), optax.constant_schedule(peak_lr),
       optax.cosine_decay_schedule(peak_lr, max(decay_steps, 1), alpha=end_lr / peak_lr if peak_lr else 0.0)],
      boundaries=[warmup_steps, warmup_steps + constant_steps])


def weight_decay_mask(params):
  """Decay every parameter with >= 2 dims (the official add_weight_decay skips 1-D params and biases)."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
  clip = [optax.clip_by_global_norm(config.grad_clip_norm)] if config.grad_clip_norm else []
  return optax.chain(*clip, optax.adamw(schedule, b1=config.b1, b2=config.b2, weight_decay=config.weight_decay,
                                        mask=weight_decay_mask))


def schedule_from_config(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """lr_schedule with warmup and decay as config.warmup_fraction / decay_fraction of total_steps."""
  return lr_schedule(peak_lr=config.lr, total_steps=total_steps,
                     warmup_steps=int(round(config.warmup_fraction * total_steps)),
                     decay_steps=int(round(config.decay_fraction * total_steps)), end_lr=config.end_lr)


def init_state(model: XAR, tx: optax.GradientTransformation, rng: jax.Array,
               step_rng: jax.Array | None = None) -> XarTrainState:
  """`rng` initialises the parameters; `step_rng` (default: fold_in(rng, 1)) is the base key of the steps."""
  ents = model.entities
  params = model.init(rng, jnp.zeros((1, ents.seq_len, model.token_dim)), jnp.zeros((1,), jnp.int32),
                      jnp.zeros((1, ents.num_entities)))
  step_rng = jax.random.fold_in(rng, 1) if step_rng is None else step_rng
  return XarTrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params, opt_state=tx.init(params),
                       rng=jax.random.key_data(step_rng))


def train_step(state: XarTrainState, batch: dict, frozen: Any = None, *, model: XAR, latent: Latent,
               tx: optax.GradientTransformation, schedule: optax.Schedule, label_drop: float,
               teacher_forcing: bool, ema_decay: float) -> tuple[XarTrainState, dict]:
  """One AdamW update of the xAR loss on {"image": (B, H, W, 3) in [0, 1], "label": (B,)}; EMA after.

  frozen: the latent's variables (a tokenizer's; latent.variables), None for a latent without any.
  """
  rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  if frozen is not None:
    latent = latent.bind(frozen)
  latents = jax.lax.stop_gradient(latent.sample(batch["image"], jax.random.fold_in(rng, _LATENT_SALT)))
  tokens = model.entities.to_sequence(latents)

  def loss_fn(params):
    return xar_loss(model, params, tokens, batch["label"], rng, label_drop=label_drop,
                    teacher_forcing=teacher_forcing, train=True)

  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, state.ema_params, params)
  metrics = {"loss": loss, **aux, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step)}
  return state.replace(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state), metrics


def load_split(config: ml_collections.ConfigDict, split: str = "train") -> offline.ArrayDataset:
  """An embedded dataset's split at config.data.image_size (config.data.num_<split> examples)."""
  d = config.data
  return offline.load(d.name, split, image_size=d.image_size, num_examples=d.get(f"num_{split}"), seed=d.seed)


def scale_images_of(config: ml_collections.ConfigDict, source: pipeline.Source | None = None) -> np.ndarray:
  """The first LATENT_SCALE_EXAMPLES training images (N, S, S, 3) in [0, 1] (tfds / folders: preprocess_eval)."""
  d = config.data
  if tokenizer_task.is_embedded(d.name):
    return load_split(config).images[:LATENT_SCALE_EXAMPLES]
  source = source if source is not None else tokenizer_task.split_source(d, "train", d.get("num_train"))
  head = tokenizer_task.FirstExamples(source, min(LATENT_SCALE_EXAMPLES, len(source)))
  tokenizer_task.check_preprocess(head, d.get("preprocess_eval") or "", d.image_size, "preprocess_eval")
  return tokenizer_task.read_images(head, preprocess=d.get("preprocess_eval") or "", batch_size=SCALE_BATCH,
                                    num_threads=d.get("num_threads") or 8, name=str(d.name), split="train").images


def train_data(config: ml_collections.ConfigDict) -> tuple[base.TrainData, int, Callable[[], np.ndarray]]:
  """(the train split as the pipeline serves it, num_classes, () -> the scale images)."""
  d = config.data
  if tokenizer_task.is_embedded(d.name):
    train_ds = load_split(config)
    return (base.TrainData(source=pipeline.ArraySource(train_ds)), train_ds.num_classes,
            lambda: train_ds.images[:LATENT_SCALE_EXAMPLES])
  source = tokenizer_task.split_source(d, "train", d.get("num_train"))
  tokenizer_task.check_preprocess(source, d.get("preprocess") or "", d.image_size, "preprocess")
  given = {"config.data.num_classes": d.get("num_classes"), "the data": getattr(source, "num_classes", None)}
  values = {k: int(v) for k, v in given.items() if v}
  if len(set(values.values())) != 1:
    raise ValueError(f"config.data.num_classes: {d.name!r} " + (
        "does not say how many classes it has; set it" if not values else
        f"has {values['the data']} classes but config.data.num_classes={values['config.data.num_classes']}; "
        "make them agree (or leave it unset)"))
  return (base.TrainData(source=source, preprocess=d.get("preprocess") or ""), next(iter(values.values())),
          lambda: scale_images_of(config, source))


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> base.Plan:
  """The xAR run of `config` (see the module docstring)."""
  del mesh
  data, num_classes, scale_images = train_data(config)
  num_train = len(data.source)
  total_steps = steps("total", config, num_train, config.batch_size)
  durations = durations_from_config(config, num_train, config.batch_size, total=total_steps)
  latent, latent_record = resolve_latent(config, scale_images)
  model = from_fields(XAR, {**config.model, "token_dim": latent.channels, "grid_size": latent.grid,
                            "num_classes": num_classes})
  schedule = schedule_from_config(config, total_steps)
  tx = make_optimizer(config, schedule)
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  step_fn = functools.partial(train_step, model=model, latent=latent, tx=tx, schedule=schedule,
                              label_drop=config.label_drop, teacher_forcing=config.teacher_forcing,
                              ema_decay=config.ema_decay)
  final = lambda _, last: {"train/final_loss": last["loss"]} if last else {}
  resolved = {"total_steps": total_steps, "num_classes": num_classes, "num_train": num_train}
  if latent_record:
    resolved["latent"] = latent_record
  latent_text = f", tokenizer latent {latent.grid}x{latent.grid}x{latent.channels}" if latent_record else ""
  return base.Plan(
      model=model, data=data, batch_keys=("image", "label"), durations=durations,
      init_fn=functools.partial(init_state, model, tx, step_rng=step_rng), init_rng=init_rng,
      step_fn=step_fn, frozen=jax.device_get(latent.variables), finalize=final,
      result_params=lambda state: state.ema_params, resolved=resolved,
      description=(f"xAR ({model.entity} entities, {model.entities.num_entities} steps of "
                   f"{model.entities.seq_len} tokens{latent_text})"))


def target(config: ml_collections.ConfigDict) -> base.Target:
  """The model and train state of a saved xAR run (num_classes and num_train from its config.json)."""
  model = model_from_config(config, config.num_classes)
  tx = make_optimizer(config, schedule_from_config(config, config.total_steps))
  return base.Target(model=model, init_fn=functools.partial(init_state, model, tx), init_rng=jax.random.key(0))


def variables(state: XarTrainState, *, ema: bool = True) -> Any:
  """The EMA (or raw) XAR variables."""
  return state.ema_params if ema else state.params


TASK = base.Task(name=NAME, build=build, target=target, variables=variables)

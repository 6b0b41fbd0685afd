"""xAR on a trained tokax tokenizer's latent (config.latent.name = "tokenizer").

End to end on tfds.testing.mock_data: configs/imagenet_tokenizer.py:runlocal trains a KL autoencoder
(3 steps), configs/imagenet_xar.py:runlocal trains xAR on its latents (4 steps), tokax.sample draws
images decoded through the tokenizer's decoder; then the numbers: the latent's grid / channels / scale
are the tokenizer's, encode -> decode equals the tokenizer's own reconstruction, a restart from a
checkpoint equals the straight run. Bad configs fail before anything trains, naming the field.
"""
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tokenizer_doubles import random_variables

from tokax import sample as sampling
from tokax.models import latent as latent_lib
from tokax.tokenizers import evaluate as tok_eval
from tokax.tokenizers import tokenizer as tokenizer_lib
from tokax.tokenizers.tokenizer import Tokenizer
from tokax.tokenizers.vae import KLAutoencoder
from tokax.train import config_utils
from tokax.train import run as training
from tokax.train.restore import load_run
from tokax.train.tasks import base, xar
from tokax.train.tasks import tokenizer as tokenizer_task

REPO = pathlib.Path(__file__).resolve().parents[2]
NUM_EXAMPLES = 32  # mock examples per split: the runlocal configs' num_train


def _tokenizer_config():
  return config_utils.load_config_file(f"{REPO}/configs/imagenet_tokenizer.py:runlocal")


def _xar_config(tokenizer_workdir):
  config = config_utils.load_config_file(f"{REPO}/configs/imagenet_xar.py:runlocal,tokenizer={tokenizer_workdir}")
  config.checkpoint_every_steps, config.keep_checkpoints = 2, 3
  return config


@pytest.fixture(scope="module")
def mock_imagenet():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=NUM_EXAMPLES, policy=tfds.testing.MockPolicy.USE_CODE):
    yield


@pytest.fixture(scope="module")
def runs(mock_imagenet, tmp_path_factory):
  root = tmp_path_factory.mktemp("xar_latent")
  tok = training.train(_tokenizer_config(), str(root / "tok"))
  straight = training.train(_xar_config(root / "tok"), str(root / "xar"))
  return root, tok, straight


@pytest.mark.slow
def test_xar_trains_on_a_tokenizer_run_and_samples_through_its_decoder(runs):
  root, tok, straight = runs
  assert tok.step == 3 and np.isfinite(tok.metrics["val/psnr"]) and tok.metrics["latent_scale"] > 0
  assert straight.step == 4 and np.isfinite(straight.metrics["train/final_loss"])

  # The latent is the tokenizer's: G = 16 px / f (2), C = its latent_dim, the scale its run recorded.
  tok_run = load_run(str(root / "tok"))
  f, latent_dim = tok_run.model.downsample_factor, tok_run.config.quantizer.latent_dim
  recorded = json.loads((root / "xar" / "config.json").read_text())["latent"]
  assert (recorded["grid"], recorded["channels"]) == (16 // f, latent_dim) == (8, 16)
  assert recorded["scale"] == tok.metrics["latent_scale"] == float(tok_run.variables["stats"]["latent_scale"])
  assert (recorded["scale_source"], recorded["step"], recorded["sample"]) == ("tokenizer run", 3, True)
  run = load_run(str(root / "xar"))
  assert (run.model.grid_size, run.model.token_dim) == (8, 16) and run.step == 4

  # encode -> decode through the Latent is the tokenizer's own reconstruction; encode is its scaled posterior mean.
  latent = xar.latent_from_config(run.config)
  images = jnp.asarray(tokenizer_task.load_split(tok_run.config, "val").images[:8])
  encoded = jax.jit(latent.encode)(images)
  assert encoded.shape == (8, 8, 8, 16) and np.all(np.isfinite(encoded))
  own_encode = jax.jit(lambda v, x: tok_run.model.apply(v, x, method=KLAutoencoder.encode))
  np.testing.assert_allclose(encoded, own_encode(tok_run.variables, images), rtol=1e-5, atol=1e-5)
  reconstruction, _ = tok_eval.make_reconstruct_fn(tok_run.model)(tok_run.variables, images)
  np.testing.assert_allclose(jax.jit(latent.decode)(encoded), reconstruction, rtol=1e-5, atol=1e-5)
  # Measured instead of read (what a discrete tokenizer or an unfinished KL run gets): the same scale, up to noise.
  unit = latent_lib.tokenizer_latent(tok_run.model, tok_run.variables, image_size=16, scale=1.0, sample=True)
  assert xar.measure_scale(unit, xar.scale_images_of(run.config)) == pytest.approx(recorded["scale"], rel=0.02)
  draws = jax.jit(latent.sample)(images, jax.random.key(1))  # training input: a posterior sample, not the mean
  assert draws.shape == encoded.shape and 0 < float(jnp.abs(draws - encoded).mean()) < 10

  # tokax.sample: EMA weights, tokens decoded through the tokenizer's decoder.
  summary = sampling.sample_workdir(str(root / "xar"), 2, out=str(root / "samples"), batch_size=2)
  assert summary["num"] == 2
  with np.load(root / "samples" / "samples.npz") as saved:
    samples, tokens = saved["images"], saved["tokens"]
  assert samples.shape == (2, 16, 16, 3) and tokens.shape == (2, 64, 16)
  assert np.all(np.isfinite(samples)) and samples.min() >= 0 and samples.max() <= 1
  decoded = jax.jit(latent.decode)(run.model.entities.from_sequence(jnp.asarray(tokens)))
  np.testing.assert_allclose(samples, decoded, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_restart_on_the_tokenizer_latent_equals_the_straight_run(runs):
  root, _, straight = runs
  # Training again in the same workdir resolves the same latent (config.json unchanged) and trains nothing.
  again = training.train(_xar_config(root / "tok"), str(root / "xar"))
  assert again.step == 4
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(again.params), jax.device_get(straight.params))
  # A run that stopped after step 2 ends on the straight run's weights (posterior draws keyed by the step).
  shutil.copytree(root / "xar" / "checkpoints" / "2", root / "resumed" / "checkpoints" / "2")
  resumed = training.train(_xar_config(root / "tok"), str(root / "resumed"))
  assert resumed.step == 4
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed.params), jax.device_get(straight.params))


def _digits_xar_config(tokenizer_workdir):
  """imagenet_xar runlocal on the embedded digits at 16 px (no tfds): what fails, fails in build."""
  config = _xar_config(tokenizer_workdir)
  config.data.name = "digits"
  return config


def _tokenizer_dir(path, **model):
  """A workdir holding only a tokenizer run's config.json (imagenet_tokenizer runlocal, `model` fields changed)."""
  config = _tokenizer_config()
  config.model.update(model)
  config.total_steps = 3
  path.mkdir()
  (path / "config.json").write_text(json.dumps(config.to_dict()))
  return path


@pytest.mark.parametrize("case, pattern", [
    ("missing", r"config\.latent\.workdir: .* is not a tokax training directory"),
    ("classifier", r"config\.latent\.workdir=.* holds a 'classifier' run .* point config\.latent\.workdir at a run of "
                   r"config\.task='tokenizer'"),
    ("no_checkpoint", r"config\.latent\.workdir=.* holds a tokenizer run but no checkpoint"),
    ("image_size", r"config\.data\.image_size=16 but the tokenizer run in .* was trained on 32 px images .*set "
                   r"config\.data\.image_size=32"),
    ("unknown_name", r"config\.latent\.name: unknown latent 'kl'; expected one of \['patch', 'tokenizer'\]"),
])
def test_bad_latent_configs_fail_in_build_naming_the_field(tmp_path, case, pattern):
  workdir = tmp_path / "tok"
  if case == "classifier":
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps({"task": "classifier", "model": {"image_size": 16}}))
  elif case == "no_checkpoint":
    _tokenizer_dir(workdir)
  elif case == "image_size":
    _tokenizer_dir(workdir, image_size=32)
  config = _digits_xar_config(workdir)
  if case == "unknown_name":
    config.latent.name = "kl"
  with pytest.raises(ValueError, match=pattern):
    training.train(config, str(tmp_path / "xar"))
  assert not (tmp_path / "xar" / "checkpoints").exists()


ARCH = dict(filters=8, channel_multipliers=(1, 2), num_res_blocks=1, z_channels=8, norm_groups=4)
IMAGES = jnp.asarray(np.random.default_rng(3).uniform(0, 1, (3, 8, 8, 3)), jnp.float32)


def test_a_discrete_tokenizer_latent_is_its_scaled_quantized_embeddings():
  model = Tokenizer(quantizer=tokenizer_lib.build_quantizer("fsq", latent_dim=3, levels=(5, 4, 3)), latent_dim=3,
                    **ARCH)
  variables = random_variables(model, IMAGES)
  latent = latent_lib.build_latent("tokenizer", image_size=8, tokenizer=(model, variables), scale=2.0)
  assert (latent.grid, latent.channels, latent.encode_sample) == (4, 3, None)
  encoded = jax.jit(latent.encode)(IMAGES)
  z_q, _ = model.apply(variables, model.apply(variables, IMAGES, method=Tokenizer.encode_latents),
                       method=Tokenizer.quantize)
  np.testing.assert_allclose(encoded, 2.0 * z_q, rtol=1e-6)
  np.testing.assert_array_equal(jax.jit(latent.sample)(IMAGES, jax.random.key(0)), encoded)  # deterministic
  reconstruction, _ = tok_eval.make_reconstruct_fn(model)(variables, IMAGES)
  np.testing.assert_allclose(jax.jit(latent.decode)(encoded), reconstruction, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match=r"config\.latent\.sample: a discrete tokenizer .* set config\.latent\.sample"
                                       r"=False"):
    latent_lib.tokenizer_latent(model, variables, image_size=8, scale=1.0, sample=True)
  with pytest.raises(ValueError, match=r"image_size=9 is not a multiple of the tokenizer's downsample factor 2"):
    latent_lib.tokenizer_latent(model, variables, image_size=9, scale=1.0)
  with pytest.raises(ValueError, match=r"pass tokenizer=\(model, variables\)"):
    latent_lib.build_latent("tokenizer", image_size=8)


def test_a_kl_latent_samples_its_posterior_and_binds_other_variables():
  model = KLAutoencoder(latent_channels=3, **ARCH)
  variables = random_variables(model, IMAGES)
  latent = latent_lib.tokenizer_latent(model, variables, image_size=8, scale=0.5, sample=True)
  mean, logvar = model.apply(variables, IMAGES, method=KLAutoencoder.posterior)
  np.testing.assert_allclose(latent.encode(IMAGES), 0.5 * mean, rtol=1e-6)
  rng = jax.random.key(4)
  noise = jax.random.normal(rng, mean.shape, jnp.float32)
  np.testing.assert_allclose(latent.sample(IMAGES, rng), 0.5 * (mean + jnp.exp(0.5 * logvar) * noise), rtol=1e-5,
                             atol=1e-6)
  # bind: the same functions over traced variables (the train step's frozen argument), same numbers.
  via_bind = jax.jit(lambda v, x: latent.bind(v).encode(x))(latent.variables, IMAGES)
  np.testing.assert_allclose(via_bind, latent.encode(IMAGES), rtol=1e-5, atol=1e-6)
  assert latent_lib.patch_latent(8, 4).bind({"anything": 1}).variables is None
  with pytest.raises(base.RunError, match=r"config\.latent\.workdir is unset"):
    xar.load_tokenizer("")

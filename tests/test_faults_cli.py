"""Entry points that used to fail obscurely say what they found and what they need: tokax.sample on a
classifier run, ViT on an empty batch, a big_vision .npz with arrays tokax does not read."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags

from tokax import evaluate, sample
from tokax.interop import big_vision
from tokax.models import ViT


def _tiny_vit(**kwargs):
  return ViT(**{**dict(variant="Ti/8", width=16, depth=1, num_heads=2, mlp_dim=32, image_size=16, num_classes=3),
                **kwargs})


def _random_variables(model, seed=0):
  """Normal(0, 0.2) numpy variables of model's shapes (eval_shape: nothing compiled)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32))
  return jax.tree.map(lambda s: (0.2 * rng.standard_normal(s.shape)).astype(np.float32), shapes)


def test_sample_on_a_classifier_run_names_the_task_and_what_it_needs(tmp_path, capsys):
  (tmp_path / "config.json").write_text(json.dumps({"task": "classifier", "model": {"name": "vit"}}))
  flag_values = flags.FlagValues()
  defined = sample._define_flags(flag_values)
  argv = flag_values(["tokax.sample", f"--workdir={tmp_path}", "--num=4"])
  with pytest.raises(SystemExit) as exited:
    sample.main(argv, defined)
  message = str(exited.value.code)
  assert message.startswith(f"python -m tokax.sample: error: --workdir '{tmp_path}' holds a 'classifier' run "
                            "(config.json task='classifier'); tokax.sample draws images from a class-conditional xAR "
                            "generator: give the workdir of a run trained with config.task='xar'"), message


def test_vit_on_an_empty_batch_names_the_batch_dimension():
  model = _tiny_vit()
  variables = _random_variables(model)
  with pytest.raises(ValueError, match=r"ViT: the batch is empty: images of shape \(0, 16, 16, 3\) have batch "
                                       r"dimension B=0; give at least one image"):
    model.apply(variables, jnp.zeros((0, 16, 16, 3), jnp.float32))


def _npz(path, params, extra=None):
  """params written in the vision_transformer .npz layout (1 block), plus `extra` arrays."""
  p, width, heads = params["params"], 16, 2
  b, pre = p["blocks_0"], "Transformer/encoderblock_0/"
  out = {"embedding/kernel": p["patch_embed"]["kernel"], "embedding/bias": p["patch_embed"]["bias"],
         "cls": p["cls_token"], "Transformer/posembed_input/pos_embedding": p["pos_embed"],
         "Transformer/encoder_norm/scale": p["norm"]["scale"], "Transformer/encoder_norm/bias": p["norm"]["bias"],
         "head/kernel": p["head"]["kernel"], "head/bias": p["head"]["bias"],
         pre + "LayerNorm_0/scale": b["norm1"]["scale"], pre + "LayerNorm_0/bias": b["norm1"]["bias"],
         pre + "LayerNorm_2/scale": b["norm2"]["scale"], pre + "LayerNorm_2/bias": b["norm2"]["bias"],
         pre + "MultiHeadDotProductAttention_1/out/kernel": b["attn"]["proj"]["kernel"].reshape(heads, -1, width),
         pre + "MultiHeadDotProductAttention_1/out/bias": b["attn"]["proj"]["bias"],
         pre + "MlpBlock_3/Dense_0/kernel": b["mlp_fc1"]["kernel"], pre + "MlpBlock_3/Dense_0/bias": b["mlp_fc1"]["bias"],
         pre + "MlpBlock_3/Dense_1/kernel": b["mlp_fc2"]["kernel"], pre + "MlpBlock_3/Dense_1/bias": b["mlp_fc2"]["bias"]}
  qkv = b["attn"]["qkv"]["kernel"].reshape(width, 3, heads, width // heads)
  qkv_bias = b["attn"]["qkv"]["bias"].reshape(3, heads, width // heads)
  for j, name in enumerate(("query", "key", "value")):
    out[pre + f"MultiHeadDotProductAttention_1/{name}/kernel"] = qkv[:, j]
    out[pre + f"MultiHeadDotProductAttention_1/{name}/bias"] = qkv_bias[j]
  np.savez(path, **out, **(extra or {}))
  return path


def test_npz_with_unknown_arrays_is_refused_unless_allowed(tmp_path):
  model = _tiny_vit(variant="Ti/8")
  params = _random_variables(model, seed=1)
  extra = {"Transformer/encoderblock_0/LayerScale_0/scale": np.full(16, 0.5, np.float32),
           "Transformer/encoderblock_0/MlpBlock_3/Dense_2/kernel": np.ones((32, 16), np.float32)}  # a third layer
  path = _npz(tmp_path / "vt.npz", params, extra)
  with pytest.raises(big_vision.UnknownKeysError, match=(
      rf"load_npz: {tmp_path}/vt.npz: 2 arrays of this checkpoint are not read into tokax's ViT and would be "
      r"dropped: \['Transformer/encoderblock_0/LayerScale_0/scale', 'Transformer/encoderblock_0/MlpBlock_3/"
      r"Dense_2/kernel'\]; .*pass allow_unknown=True")):
    big_vision.load_npz(path, model)
  loaded = big_vision.load_npz(path, model, allow_unknown=True)
  jax.tree.map(np.testing.assert_array_equal, loaded, params)
  clean = big_vision.load_npz(_npz(tmp_path / "clean.npz", params), model)  # nothing unknown: loads as before
  np.testing.assert_array_equal(clean["params"]["head"]["kernel"], params["params"]["head"]["kernel"])

  # The evaluate CLI (the function it calls per --model) refuses it, and loads it with --allow_unknown_keys.
  path = _npz(tmp_path / "layer_scale.npz", params, {"Transformer/encoderblock_0/LayerScale_0/scale": np.ones(16)})
  args = evaluate.parse_args(["--model", str(path), "--data", "digits", "--out", str(tmp_path / "o")])
  with pytest.raises(ValueError, match=r"--model load_npz: .*layer_scale.npz: 1 arrays .*\['Transformer/encoderblock_0/"
                                       r"LayerScale_0/scale'\].*\nto evaluate it without those arrays, pass "
                                       r"--allow_unknown_keys"):
    evaluate.load_model(args)
  args = evaluate.parse_args(["--model", str(path), "--data", "digits", "--out", str(tmp_path / "o"),
                              "--allow_unknown_keys"])
  loaded = evaluate.load_model(args)
  np.testing.assert_array_equal(loaded.variables["params"]["blocks_0"]["mlp_fc1"]["kernel"],
                                params["params"]["blocks_0"]["mlp_fc1"]["kernel"])

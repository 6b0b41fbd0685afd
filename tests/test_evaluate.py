"""`python -m tokax.evaluate` end to end on the CPU: a trained folder run, timm and AugReg files, tfds, bad input."""
import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from tokax import evaluate
from tokax.data import offline, pipeline
from tokax.models import ViT
from tokax.reduction import build
from tokax.train.model import normalize_images

REPO = pathlib.Path(__file__).resolve().parents[1]
FAST = ["--warmup", "0", "--repeats", "1", "--batch_size", "8", "--no_progress"]


def _image_folder(root, num_classes=3):
  rng = np.random.default_rng(1)
  for split, per_class in (("train", 8), ("val", 3)):
    for c in range(num_classes):
      (root / split / f"class_{c}").mkdir(parents=True)
      for i in range(per_class):
        pixels = rng.integers(0, 256, size=(int(rng.integers(18, 26)), int(rng.integers(18, 26)), 3)).astype(np.uint8)
        pixels[..., c] = 255
        Image.fromarray(pixels).save(root / split / f"class_{c}" / f"{i}.png")
  return root


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
  """A 4-step, 2-block run on a 3-class image folder (configs/folder_vit.py:runlocal)."""
  from tokax.train import run as training

  root = _image_folder(tmp_path_factory.mktemp("images"))
  spec = importlib.util.spec_from_file_location("folder_vit", REPO / "configs" / "folder_vit.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(f"data=folder:{root},runlocal")
  config.progress_bar = False
  config.model.depth = 2
  config.data.num_classes = 3
  workdir = tmp_path_factory.mktemp("run")
  return root, workdir, training.train(config, str(workdir))


def test_workdir_run_dense_equals_the_trainer_and_tokens_follow_token_counts(folder_run):
  _, workdir, trained = folder_run
  result = evaluate.main(["--model", str(workdir), "--reduction", "tome:2", "--reduction", "evit:0.7", *FAST])
  rows = {row["method"]: row for row in result["rows"]}
  assert list(rows) == ["dense", "tome:2", "evit:0.7"]
  dense = rows["dense"]
  assert dense["num_examples"] == trained.metrics["test/num_examples"] == 9
  assert dense["top1"] == pytest.approx(trained.metrics["test/accuracy"], abs=1e-6)
  assert dense["agreement"] == 1.0 and dense["top5"] == 1.0  # 3 classes: the top-5 holds every class
  num_tokens = (16 // 4) ** 2 + 1
  for spec in ("tome:2", "evit:0.7"):
    counts = build(spec).token_counts(num_tokens, 2, 1)
    assert rows[spec]["layer_tokens"] == list(counts) and rows[spec]["tokens"] == counts[-1], spec
    agreement = np.mean(result["predictions"][spec] == result["predictions"]["dense"])
    assert rows[spec]["agreement"] == pytest.approx(agreement)
  assert rows["dense"]["tokens"] == num_tokens and rows["tome:2"]["tokens"] < num_tokens
  assert rows["tome:2"]["gflops_per_image"] < dense["gflops_per_image"]
  out = workdir / "evaluate"
  saved = json.loads((out / "results.json").read_text())
  assert [row["method"] for row in saved["rows"]] == list(rows)
  assert "| tome:2 |" in (out / "results.md").read_text()
  assert (out / "accuracy_vs_gflops.png").stat().st_size > 1000


def test_timm_safetensors_predictions_equal_timm(tmp_path):
  from safetensors.torch import save_file
  from torch_compat import import_timm

  from interop.interop_helpers import randomize_, run_timm

  timm = import_timm()
  model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=10,
                            weight_init="skip")
  randomize_(model, seed=3)
  model.eval()
  path = tmp_path / "vit_tiny.safetensors"
  save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
  result = evaluate.main(["--model", str(path), "--timm_name", "vit_tiny_patch16_224", "--data", "digits",
                          "--num_examples", "24", "--out", str(tmp_path / "out"), *FAST])
  images = offline.load("digits", "test", image_size=32, num_examples=24).images
  expected = run_timm(model, (images - 0.5) / 0.5).argmax(-1)  # vit_tiny's pretrained cfg: mean = std = 0.5
  np.testing.assert_array_equal(result["predictions"]["dense"], expected)
  assert result["rows"][0]["num_examples"] == 24 and result["rows"][0]["tokens"] == 5


def _tiny_vit():
  return ViT(variant="Ti/8", width=32, depth=2, num_heads=2, mlp_dim=64, image_size=32, num_classes=10)


def _random_params(model, seed=0):
  """Normal(0, 0.2) numpy parameters of model's shapes (no init compiled: it takes seconds on a busy CPU)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  return jax.tree.map(lambda s: (0.2 * rng.standard_normal(s.shape)).astype(np.float32), shapes)


def _forward(model, params, images):
  """model's logits of images in [0, 1], jitted (an eager forward compiles each op on its own)."""
  return jax.jit(lambda p, x: model.apply(p, normalize_images(x)))(params, jnp.asarray(images))


@pytest.fixture(scope="module")
def augreg_npz(tmp_path_factory):
  """(path, model, params): a randomly initialised 2-block ViT written in the vision_transformer .npz layout."""
  model = _tiny_vit()
  params = _random_params(model)
  p, width, heads = params["params"], 32, 2
  out = {"embedding/kernel": p["patch_embed"]["kernel"], "embedding/bias": p["patch_embed"]["bias"],
         "cls": p["cls_token"], "Transformer/posembed_input/pos_embedding": p["pos_embed"],
         "Transformer/encoder_norm/scale": p["norm"]["scale"], "Transformer/encoder_norm/bias": p["norm"]["bias"],
         "head/kernel": p["head"]["kernel"], "head/bias": p["head"]["bias"]}
  for i in range(2):
    b, pre = p[f"blocks_{i}"], f"Transformer/encoderblock_{i}/"
    qkv = b["attn"]["qkv"]["kernel"].reshape(width, 3, heads, width // heads)
    qkv_bias = b["attn"]["qkv"]["bias"].reshape(3, heads, width // heads)
    out.update({pre + "LayerNorm_0/scale": b["norm1"]["scale"], pre + "LayerNorm_0/bias": b["norm1"]["bias"],
                pre + "LayerNorm_2/scale": b["norm2"]["scale"], pre + "LayerNorm_2/bias": b["norm2"]["bias"],
                pre + "MultiHeadDotProductAttention_1/out/kernel": b["attn"]["proj"]["kernel"].reshape(
                    heads, width // heads, width),
                pre + "MultiHeadDotProductAttention_1/out/bias": b["attn"]["proj"]["bias"],
                pre + "MlpBlock_3/Dense_0/kernel": b["mlp_fc1"]["kernel"], pre + "MlpBlock_3/Dense_0/bias": b["mlp_fc1"]["bias"],
                pre + "MlpBlock_3/Dense_1/kernel": b["mlp_fc2"]["kernel"], pre + "MlpBlock_3/Dense_1/bias": b["mlp_fc2"]["bias"]})
    for j, name in enumerate(("query", "key", "value")):
      out[pre + f"MultiHeadDotProductAttention_1/{name}/kernel"] = qkv[:, j]
      out[pre + f"MultiHeadDotProductAttention_1/{name}/bias"] = qkv_bias[j]
  path = tmp_path_factory.mktemp("npz") / "augreg_tiny.npz"
  np.savez(path, **out)
  return path, model, params


def test_augreg_npz_with_post_reducers(augreg_npz, tmp_path):
  path, model, params = augreg_npz
  result = evaluate.main(["--model", str(path), "--data", "cluttered_digits", "--num_examples", "16",
                          "--reduction", "fastervlm:0.5", "--reduction", "divprune:0.5", "--out", str(tmp_path), *FAST])
  images = offline.load("cluttered_digits", "test", image_size=32, num_examples=16).images
  expected = np.asarray(jnp.argmax(_forward(model, params, images), -1))
  np.testing.assert_array_equal(result["predictions"]["dense"], expected)
  rows = {row["method"]: row for row in result["rows"]}
  assert rows["fastervlm:0.5"]["tokens"] == 8  # the prefix dropped, half of the 16 patches kept
  assert rows["divprune:0.5"]["tokens"] == 1 + 8
  # DivPrune keeps [CLS]: a cls-pooled head reads the same token as dense.
  np.testing.assert_array_equal(result["predictions"]["divprune:0.5"], expected)
  assert rows["divprune:0.5"]["agreement"] == 1.0
  # the dense row and the two post rows shared one pass of the dense model; each row running its own model
  # gives the same rows
  assert rows["fastervlm:0.5"]["timing"] == rows["divprune:0.5"]["timing"] == "encoder + reducer"
  assert rows["dense"]["timing"] == "encoder"
  alone = evaluate.main(["--model", str(path), "--data", "cluttered_digits", "--num_examples", "16",
                         "--reduction", "fastervlm:0.5", "--reduction", "divprune:0.5", "--encoder_cache_gb", "0",
                         "--out", str(tmp_path / "alone"), *FAST])
  for name in ("dense", "fastervlm:0.5", "divprune:0.5"):
    np.testing.assert_array_equal(alone["predictions"][name], result["predictions"][name])
  for shared, own in zip(result["rows"], alone["rows"]):  # a shared post row counts its logits on one image
    timings = ("images_per_s", "median_ms", "timing", "gflops_per_image")
    assert {k: v for k, v in shared.items() if k not in timings} == \
        {k: v for k, v in own.items() if k not in timings}, own["method"]
    assert shared["gflops_per_image"] == pytest.approx(own["gflops_per_image"], rel=1e-3)
  assert result["rows"][0]["gflops_per_image"] == alone["rows"][0]["gflops_per_image"]  # dense: its own lowering
  assert "timing" not in {key for row in alone["rows"] for key in row}


def test_timm_architecture_reads_what_is_not_given_off_the_state_dict():
  rng = np.random.default_rng(0)
  sd = {"pos_embed": rng.normal(size=(1, 1 + 7 * 7, 192)), "head.weight": rng.normal(size=(32, 192))}
  for given, want in (({}, (112, 32)), ({"num_classes": 32}, (112, 32)), ({"image_size": 112}, (112, 32))):
    kwargs, _ = evaluate.timm_architecture("vit_tiny_patch16_224", state_dict=sd, **given)
    assert (kwargs["image_size"], kwargs["num_classes"]) == want, given


def test_a_method_with_learned_modules_on_a_model_without_them_says_to_train_it(augreg_npz, tmp_path):
  path, _, _ = augreg_npz
  with pytest.raises(ValueError, match=r"--reduction slim:0.5: the model has no parameters for Slim's modules .*"
                     r"train with --config.reduction=slim:0.5"):
    evaluate.main(["--model", str(path), "--data", "cluttered_digits", "--num_examples", "8",
                   "--reduction", "slim:0.5", "--out", str(tmp_path), *FAST])


def test_tfds_mock_data(augreg_npz, tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  path, model, params = augreg_npz
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    result = evaluate.main(["--model", str(path), "--data", "tfds:mnist:test", "--out", str(tmp_path), *FAST])
    batches = pipeline.make_iterator("tfds:mnist:test", batch_size=12, shuffle=False, drop_remainder=False,
                                     num_epochs=1, preprocess="decode|resize_small(36)|central_crop(32)|value_range(0, 1)")
    batch = next(iter(batches))
  assert result["rows"][0]["num_examples"] == 12
  expected = np.asarray(jnp.argmax(_forward(model, params, batch["image"]), -1))
  np.testing.assert_array_equal(result["predictions"]["dense"], expected)
  assert result["rows"][0]["top1"] == pytest.approx(np.mean(expected == batch["label"]))


def test_bad_input_fails_at_once_naming_the_fix(folder_run, augreg_npz, tmp_path):
  root, workdir, _ = folder_run
  npz, _, _ = augreg_npz
  base = ["--model", str(npz), "--data", "digits", "--out", str(tmp_path / "o"), *FAST]
  cases = [
      (["--reduction", "tomme:8"], r"unknown method 'tomme'.*'tome'"),
      (["--reduction", "tome:8,rr=2"], r"unknown fields \['rr'\]"),
      (["--reduction", "evit:1.5"], r"evit:1.5"),
  ]
  for extra, pattern in cases:
    with pytest.raises(ValueError, match=pattern):
      evaluate.main(base + extra)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ValueError, match="not a tokax training directory"):
    evaluate.main(["--model", str(empty), *FAST])
  tokenizer = tmp_path / "tokenizer_run"
  tokenizer.mkdir()
  (tokenizer / "config.json").write_text(json.dumps({"task": "tokenizer"}))
  with pytest.raises(ValueError, match="'tokenizer' run.*measures classifiers"):
    evaluate.main(["--model", str(tokenizer), "--out", str(tmp_path / "t"), *FAST])
  with pytest.raises(ValueError, match=r"does not fit ViT.*B/16"):
    evaluate.main(["--model", str(npz), "--variant", "B/16", "--data", "digits", "--out", str(tmp_path / "b"), *FAST])
  with pytest.raises(ValueError, match=r"has 3 classes but the model's head has 10"):
    evaluate.main(["--model", str(npz), "--data", f"folder:{root}", "--out", str(tmp_path / "c"), *FAST])
  with pytest.raises(ValueError, match=r"inside the run .*evaluate"):
    evaluate.main(["--model", str(npz), "--data", "digits", "--out", str(workdir / "elsewhere"), *FAST])
  assert not (workdir / "elsewhere").exists()


def test_timm_weights_that_do_not_fit_the_named_architecture(tmp_path):
  from safetensors.numpy import save_file

  from tokax.interop.timm import export_state_dict

  params = _random_params(_tiny_vit())
  path = tmp_path / "tiny.safetensors"
  save_file({k: np.ascontiguousarray(v) for k, v in export_state_dict(params).items()}, str(path))
  with pytest.raises(ValueError, match=r"does not fit --timm_name 'vit_small_patch16_224'"):
    evaluate.main(["--model", str(path), "--timm_name", "vit_small_patch16_224", "--data", "digits",
                   "--out", str(tmp_path / "o"), *FAST])
  with pytest.raises(ValueError, match="--timm_name"):
    evaluate.main(["--model", str(path), "--data", "digits", "--out", str(tmp_path / "o"), *FAST])

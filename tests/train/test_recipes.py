"""The ImageNet recipes (configs/imagenet_*.py): the recipe each docstring states is the config, runlocal differs from
the real config only in sizes, and every runlocal variant trains and evaluates end to end through `python -m
tokax.train` (in process) on a tiny imagenet2012-shaped tfds dataset (TFRecord, tests/data/tfds_testing.py)."""
import json
import math
import os
import pathlib
import re
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from cli_testing import run_train_cli
from data import tfds_testing  # tests/data/tfds_testing.py (tests/ is on sys.path)
from tokax.interop import common, export_state_dict
from tokax.train import logging as metric_logging
from tokax.train.config_utils import load_config_file
from tokax.train.restore import load_run
from tokax.train.tasks import classifier

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
DEIT = str(CONFIGS / "imagenet_deit.py")
AUGREG = str(CONFIGS / "imagenet_augreg_finetune.py")
REDUCTION = str(CONFIGS / "imagenet_finetune_reduction.py")
DTOME = str(CONFIGS / "imagenet_dtome.py")
NUM_TRAIN, NUM_VAL = 100, 16  # train[99%:] (AugReg's minival) is then one image

# Fields a runlocal config may change: sizes, durations and periods, and how a laptop CPU runs it (input workers,
# float32: XLA:CPU compiles the bfloat16 programs ~1.5x slower). Everything else is the recipe.
SIZE_FIELDS = {
    "model.width", "model.depth", "model.num_heads", "model.mlp_dim", "model.image_size", "batch_size",
    "eval_batch_size", "total_steps", "total_epochs", "warmup_steps", "warmup_epochs", "log_every_steps",
    "eval_every_steps", "eval_every_epochs", "checkpoint_every_steps", "checkpoint_every_epochs", "progress_bar",
    "num_examples", "calibration_batches",
}
CPU_FIELDS = {"model.dtype", "data.num_workers", "data.num_threads"}
# Fields that follow the sizes: lr (batch_size, by the Recipe's formula), the preprocessing (the image size),
# layer lists (the depth), a checkpoint teacher's config (its runlocal variant), MCTF's compiled teacher
# schedules (the two ends of the real set: compile time on a CPU); each checked below.
DERIVED_FIELDS = {"lr", "data.preprocess", "data.preprocess_eval", "reduction.activate_layers",
                  "distill.teacher_config", "consistency.teacher_r"}

RECIPES = [  # (config file, its argument, the file whose docstring states the recipe, the Recipe's tag)
    (DEIT, "variant=S/16", DEIT, ""),
    (DEIT, "variant=B/16", DEIT, ""),
    (DEIT, "variant=S/16,distill=/runs/deit_b", DEIT, ""),
    (DEIT, "variant=S/16,ema_decay=0.99996", DEIT, ""),
    (AUGREG, "image_size=224", AUGREG, ""),
    (REDUCTION, "method=mctf", REDUCTION, "mctf"),
    (REDUCTION, "method=evit", REDUCTION, "evit"),
    (REDUCTION, "method=sit", REDUCTION, "sit"),
    (REDUCTION, "method=tome", REDUCTION, "tome"),
    (REDUCTION, "method=tome", DEIT, ""),  # ToMe's recipe is DeiT's: imagenet_deit.py's lines hold for it too
    (DTOME, "", DTOME, ""),
]


# --- the recipes as the docstrings state them -------------------------------------------------------

def recipe_lines(doc: str, tag: str) -> list[tuple[str, str]]:
  """[(field, expression)] of the docstring's "Recipe:" (tag "") or "Recipe [tag]:" section: the "  field = value"
  lines that follow its header (prose lines before the first one are skipped, the first other line ends them)."""
  lines = doc.splitlines()
  header = re.compile(r"^\s*Recipe" + (rf" \[{tag}\]:" if tag else r"\b(?! \[)"))
  field = re.compile(r"^\s+([a-z_][\w.]*) = (.+)$")
  start = next(i for i, line in enumerate(lines) if header.match(line))
  found = []
  for line in lines[start + 1:]:
    m = field.match(line)
    if m:
      found.append((m[1], m[2].strip()))
    elif found:
      break
  assert found, f"no Recipe{f' [{tag}]' if tag else ''} lines in the docstring"
  return found


def _get(config, path):
  node = config
  for part in path.split("."):
    node = node[part]
  return node.to_dict() if hasattr(node, "to_dict") else node


def _same(got, want) -> bool:
  if isinstance(want, float) or isinstance(got, float):
    return not isinstance(got, (str, bool)) and got is not None and math.isclose(got, want, rel_tol=1e-9, abs_tol=0)
  if isinstance(want, (tuple, list)):
    return isinstance(got, (tuple, list)) and len(got) == len(want) and all(map(_same, got, want))
  return got == want and type(got) is type(want)


def _flat(config, prefix=""):
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out


def _module_doc(path: str) -> str:
  import ast

  return ast.get_docstring(ast.parse(pathlib.Path(path).read_text()))


@pytest.mark.parametrize("path,arg,doc,tag", RECIPES,
                         ids=[f"{pathlib.Path(p).stem}:{a}:{pathlib.Path(d).stem}{t}" for p, a, d, t in RECIPES])
def test_configs_hold_the_recipes_their_docstrings_state(path, arg, doc, tag):
  """Every Recipe line of the docstring equals the real config's field; runlocal keeps every non-size field, its
  lr follows the Recipe's formula at its own batch size, and its preprocessing differs only by the image size."""
  real = load_config_file(f"{path}:{arg}")
  local = load_config_file(f"{path}:{arg + ',' if arg else ''}runlocal")
  for name, expression in recipe_lines(_module_doc(doc), tag):
    for config in (real, local):
      if config is local and name in SIZE_FIELDS:
        continue
      want = eval(expression, {}, {"batch_size": config.get("batch_size")})  # noqa: S307 (our own docstrings)
      if config is local and name in DERIVED_FIELDS - {"lr"}:
        continue  # checked against the real value below
      got = _get(config, name)
      where = f"{pathlib.Path(path).name}:{arg}{' (runlocal)' * (config is local)}"
      assert _same(got, want), f"{where}: {name} is {got!r}, the docstring says {expression} = {want!r}"

  real_flat, local_flat = _flat(real), _flat(local)
  assert set(real_flat) <= set(local_flat) and set(local_flat) - set(real_flat) <= SIZE_FIELDS
  changed = {k for k in real_flat if not _same(local_flat[k], real_flat[k])}
  allowed = SIZE_FIELDS | CPU_FIELDS | DERIVED_FIELDS
  assert changed <= allowed, f"runlocal changes recipe fields: {sorted(changed - allowed)}"
  if "model.dtype" in changed:
    assert (real_flat["model.dtype"], local_flat["model.dtype"]) == ("bfloat16", "float32")
  size = real_flat.get("model.image_size")
  for key in ("data.preprocess", "data.preprocess_eval"):
    if key in real_flat:
      assert local_flat[key] == real_flat[key].replace(f"({size},", f"({local_flat['model.image_size']},")
  if "reduction.activate_layers" in real_flat:  # MCTF: every block but the first, at either depth
    for flat in (real_flat, local_flat):
      assert flat["reduction.activate_layers"] == tuple(range(1, flat.get("model.depth") or 12))
  if "consistency.teacher_r" in real_flat:
    real_r = real_flat["consistency.teacher_r"]
    assert local_flat["consistency.teacher_r"] == (real_r[0], real_r[-1])
  if real_flat.get("distill.teacher_config"):
    assert local_flat["distill.teacher_config"] == real_flat["distill.teacher_config"] + ",runlocal"


def test_real_sizes_and_arguments():
  """The sizes the docstrings state: DeiT-S / B at 224 px, AugReg B/16 at 224 / 384 px with timm's crop_pct."""
  small, base = load_config_file(f"{DEIT}:variant=S/16"), load_config_file(f"{DEIT}:variant=B/16")
  assert (small.model.variant, base.model.variant) == ("S/16", "B/16")
  assert small.lr == base.lr == pytest.approx(1e-3) and small.data.name == "tfds:imagenet2012"
  assert "depth" not in small.model and small.model.dtype == "bfloat16"
  high = load_config_file(f"{AUGREG}:image_size=384")
  assert high.model.image_size == 384 and high.model.variant == "B/16"
  assert high.data.preprocess_eval == ('decode|resize_center_crop(384, crop_pct=1.0, interpolation="bicubic")'
                                       '|value_range(-1, 1)')
  assert high.init_from.checkpoint.startswith("B_16-i21k-300ep")
  with pytest.raises(ValueError, match="image_size must be one of \\[224, 384\\]"):
    load_config_file(f"{AUGREG}:image_size=256")
  with pytest.raises(ValueError, match="method must be one of"):
    load_config_file(f"{REDUCTION}:method=dtome")
  distilled = load_config_file(f"{DEIT}:distill=/ckpt/t.safetensors,teacher_config=configs/imagenet_deit.py")
  assert distilled.model.distilled and distilled.distill.teacher_checkpoint == "/ckpt/t.safetensors"
  assert not distilled.distill.teacher_workdir and not distilled.distill.init_student
  start = load_config_file(f"{REDUCTION}:method=evit")
  assert start.init_from.to_dict() == {"checkpoint": "deit_small_patch16_224.fb_in1k"}
  from_run = load_config_file(f"{REDUCTION}:method=evit,init=/runs/deit_s")
  assert from_run.init_from.to_dict() == {"workdir": "/runs/deit_s"}
  config = load_config_file(f"{DEIT}:runlocal")
  config.batch_size = 256  # lr follows batch_size: --config.batch_size=256 gives DeiT's 5e-4 * 256 / 512
  assert config.lr == pytest.approx(2.5e-4)


# --- the runs ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tiny_imagenet")
  tfds_testing.build_tiny_imagenet(data_dir, file_format="tfrecord", num_train=NUM_TRAIN, num_val=NUM_VAL)
  return str(data_dir)


def _train(spec, workdir, tiny, *extra):
  run_train_cli(f"--config={spec}", f"--workdir={workdir}", f"--config.data.name=tfds:{tfds_testing.NAME}",
                f"--config.data.data_dir={tiny}", *extra)


def _check_run(workdir, *, teacher_agreement=False):
  """The metrics of a finished runlocal run (2 steps; val and test at the end) are there and finite; the final
  checkpoint restores (load_run). Returns the restored run."""
  records = metric_logging.read_metrics(pathlib.Path(workdir) / "metrics.jsonl")
  losses = [r["train/loss"] for r in records if "train/loss" in r]
  assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
  if teacher_agreement:
    assert all(0 <= r["train/teacher_agreement"] <= 1 for r in records if "train/loss" in r)
  final = records[-1]
  assert final["step"] == 2 and final["test/num_examples"] == NUM_VAL
  for key in ("val/loss", "val/accuracy", "test/loss", "test/accuracy"):
    assert isinstance(final[key], float) and math.isfinite(final[key]), (key, final[key])
  assert 0 <= final["test/accuracy"] <= 1 and final["test/loss"] > 0
  run = load_run(str(workdir))
  assert run.step == 2
  assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(run.variables))
  return run


@pytest.fixture(scope="module")
def deit(tiny, tmp_path_factory):
  """The runlocal DeiT-S run (the start and teacher of the others) and its weights as a timm .safetensors file."""
  from safetensors.numpy import save_file

  workdir = tmp_path_factory.mktemp("deit")
  _train(f"{DEIT}:runlocal", workdir, tiny)
  run = _check_run(workdir)
  path = str(workdir / "deit_s.safetensors")
  save_file({k: np.ascontiguousarray(v, np.float32) for k, v in export_state_dict(run.variables).items()}, path)
  return workdir, run, path


def test_deit(deit):
  workdir, run, _ = deit
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["model"]["num_classes"] == 1000 and saved["data"]["repeated_augmentation"] == 3
  assert run.model.arch.depth == 2 and run.model.drop_path == 0.1 and run.model.reduction is None


@pytest.mark.slow
def test_deit_distilled_from_a_tokax_run(deit, tiny, tmp_path):
  teacher, _, _ = deit
  _train(f"{DEIT}:runlocal,distill={teacher}", tmp_path, tiny)
  run = _check_run(tmp_path, teacher_agreement=True)
  assert run.model.distilled and "dist_token" in run.variables["params"]


def _flat_params(variables):
  return {"/".join(p): np.asarray(v) for p, v in common.flatten(variables["params"]).items()}


SLOW_METHODS = [pytest.param(m, marks=pytest.mark.slow) for m in ("evit", "sit", "tome")]


@pytest.mark.parametrize("method", ["mctf", *SLOW_METHODS])
def test_reduction_recipes(method, deit, tiny, tmp_path):
  """Each method's runlocal: MCTF / EViT / SiT start from the DeiT run's timm file (init_from.checkpoint; SiT's
  FRD teacher is the same file), ToMe trains from scratch; the restored model has the method."""
  _, dense, path = deit
  _train(f"{REDUCTION}:method={method},runlocal,init={path}", tmp_path, tiny)
  run = _check_run(tmp_path)
  assert type(run.model.reduction).__name__ == {"mctf": "MCTF", "evit": "EViT", "sit": "Slim", "tome": "ToMe"}[method]
  saved = json.loads((tmp_path / "config.json").read_text())
  if method == "tome":  # from scratch
    assert "init_from" not in saved and "distill" not in saved
    return
  # two steps at lr <= 3.2e-6 from the file: the DeiT run's weights to ~1e-5 (a fresh init differs by ~0.02)
  got, start = _flat_params(run.variables), _flat_params(dense.variables)
  for name, value in start.items():
    np.testing.assert_allclose(got[name], value, atol=1e-4, err_msg=name)


def _write_augreg_npz(path, *, width, depth, heads, mlp_dim, grid, num_classes, rng):
  """An .npz in vision_transformer's AugReg layout (per-head q / k / v kernels, HWIO patch conv, a [cls] position
  row) with random arrays: the upstream checkpoint at the model's shapes, another grid and class count."""
  head_dim = width // heads
  normal = lambda *shape: rng.normal(0, 0.5, shape).astype(np.float32)
  arrays = {"embedding/kernel": normal(16, 16, 3, width), "embedding/bias": normal(width), "cls": normal(1, 1, width),
            "Transformer/posembed_input/pos_embedding": normal(1, 1 + grid * grid, width),
            "Transformer/encoder_norm/scale": normal(width), "Transformer/encoder_norm/bias": normal(width),
            "head/kernel": normal(width, num_classes), "head/bias": normal(num_classes)}
  for i in range(depth):
    block = f"Transformer/encoderblock_{i}/"
    mha = block + "MultiHeadDotProductAttention_1/"
    for name in ("query", "key", "value"):
      arrays[f"{mha}{name}/kernel"] = normal(width, heads, head_dim)
      arrays[f"{mha}{name}/bias"] = normal(heads, head_dim)
    arrays[f"{mha}out/kernel"], arrays[f"{mha}out/bias"] = normal(heads, head_dim, width), normal(width)
    for norm in ("LayerNorm_0", "LayerNorm_2"):
      arrays[f"{block}{norm}/scale"], arrays[f"{block}{norm}/bias"] = normal(width), normal(width)
    arrays[f"{block}MlpBlock_3/Dense_0/kernel"], arrays[f"{block}MlpBlock_3/Dense_0/bias"] = (
        normal(width, mlp_dim), normal(mlp_dim))
    arrays[f"{block}MlpBlock_3/Dense_1/kernel"], arrays[f"{block}MlpBlock_3/Dense_1/bias"] = (
        normal(mlp_dim, width), normal(width))
  np.savez(path, **arrays)
  return arrays


@pytest.mark.slow
def test_augreg_finetune_from_an_npz(tiny, tmp_path):
  """The upstream .npz (2 x 2 patch grid, 10 classes) starts the 64 px, 1000-class fine-tune: the head is reset,
  the position grid resampled bilinearly (vit_jax's interpolate_posembed), everything else loaded."""
  config = load_config_file(f"{AUGREG}:runlocal")
  m = config.model
  npz = str(tmp_path / "B_16-i21k-tiny.npz")
  arrays = _write_augreg_npz(npz, width=m.width, depth=m.depth, heads=m.num_heads, mlp_dim=m.mlp_dim, grid=2,
                             num_classes=10, rng=np.random.default_rng(0))
  model = classifier.model_from_config(config, 1000)
  fitted = classifier.checkpoint_params(npz, model)["params"]
  assert "head" not in fitted
  np.testing.assert_array_equal(fitted["cls_token"], arrays["cls"])
  np.testing.assert_array_equal(fitted["patch_embed"]["kernel"], arrays["embedding/kernel"])
  pos = arrays["Transformer/posembed_input/pos_embedding"]
  np.testing.assert_array_equal(fitted["pos_embed"][:, 0], pos[:, 0])
  # order-1 zoom 2 -> 4 maps the corners onto the corners: row k of the new grid samples old row k / 3
  old = pos[0, 1:].reshape(2, 2, -1)
  t = np.arange(4) / 3
  rows = old[0][None] * (1 - t)[:, None, None] + old[1][None] * t[:, None, None]  # (4, 2, C)
  want = rows[:, 0][:, None] * (1 - t)[None, :, None] + rows[:, 1][:, None] * t[None, :, None]  # (4, 4, C)
  np.testing.assert_allclose(fitted["pos_embed"][0, 1:], want.reshape(16, -1), rtol=1e-5, atol=1e-6)

  workdir = tmp_path / "run"
  _train(f"{AUGREG}:runlocal,init={npz}", workdir, tiny)
  run = _check_run(workdir)
  got = _flat_params(run.variables)
  assert got["head/kernel"].shape == (m.width, 1000) and np.abs(got["head/kernel"]).max() < 0.05  # from zeros
  np.testing.assert_allclose(got["cls_token"], arrays["cls"], atol=0.05)  # two SGD steps at lr <= 0.01
  np.testing.assert_allclose(got["pos_embed"][0, 1:], want.reshape(16, -1), atol=0.05)


@pytest.mark.slow
def test_dtome_calibrates_in_tokax_evaluate(deit, tiny, tmp_path):
  """DToMe's recipe through `python -m tokax.evaluate`: thresholds calibrated on the first batch, rows for dense,
  ToMe and DToMe at the same r with finite accuracies."""
  from tokax import evaluate

  workdir, _, _ = deit
  result = evaluate.main(["--config", f"{DTOME}:runlocal", "--model", str(workdir), "--out", str(tmp_path / "eval"),
                          "--data", f"tfds:{tfds_testing.NAME}:validation", "--data_dir", tiny, "--repeats", "1",
                          "--warmup", "1", "--no_progress"])
  rows = {row["spec"]: row for row in result["rows"]}
  assert list(rows) == ["none", "tome:13", "dtome:13"] and result["num_examples"] == NUM_VAL
  assert all(0 <= row["top1"] <= 1 for row in rows.values())
  assert "calibrated on the first 8 eval images" in rows["dtome:13"]["note"]
  assert (tmp_path / "eval" / "results.json").exists()


def test_batch_not_divisible_by_the_devices_names_both(tmp_path):
  """A recipe asked for a batch that 2 devices cannot split: refused before anything is built, naming the batch
  size, the device count and a batch that works."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
             XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2")
  proc = subprocess.run([sys.executable, "-m", "tokax.train", f"--config={DEIT}:runlocal", f"--workdir={tmp_path}",
                         "--config.batch_size=7"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert ("config.batch_size=7 must be a multiple of the mesh's data axis (2, over 2 devices: mesh {'data': 2, "
          "'model': 1}) and of the process count (1); set --config.batch_size to a multiple of 2 (e.g. 6)"
          ) in proc.stderr
  assert not (tmp_path / "metrics.jsonl").exists()


def test_distillation_losses_take_mixup_targets():
  """DeiT's and SiT's recipes mix images (Mixup / CutMix): their losses read (B, K) targets as timm's
  SoftTargetCrossEntropy, and equal the int-label loss on one-hot targets."""
  from tokax.train import losses

  rng = np.random.default_rng(0)
  cls, dist, teacher = (rng.normal(size=(4, 5)).astype(np.float32) for _ in range(3))
  labels = np.array([0, 3, 1, 4])
  one_hot = np.eye(5, dtype=np.float32)[labels]
  for smoothing in (0.0, 0.1):
    np.testing.assert_allclose(losses.hard_distillation_loss(cls, dist, teacher, one_hot, label_smoothing=smoothing),
                               losses.hard_distillation_loss(cls, dist, teacher, labels, label_smoothing=smoothing),
                               rtol=1e-6)
  mixed = 0.7 * one_hot + 0.3 * one_hot[::-1]
  log_p = cls - np.log(np.exp(cls).sum(-1, keepdims=True))
  teacher_labels = teacher.argmax(-1)
  want = 0.5 * -(mixed * log_p).sum(-1).mean() + 0.5 * -(
      dist - np.log(np.exp(dist).sum(-1, keepdims=True)))[np.arange(4), teacher_labels].mean()
  np.testing.assert_allclose(losses.hard_distillation_loss(cls, dist, teacher, mixed), want, rtol=1e-5)
  tokens = [rng.normal(size=(4, 3, 2)).astype(np.float32)]
  loss, parts = losses.frd_loss(cls, tokens, teacher, tokens, mixed)
  np.testing.assert_allclose(parts["loss_cls"], -(mixed * log_p).sum(-1).mean(), rtol=1e-5)

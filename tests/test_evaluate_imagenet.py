"""configs/imagenet_reductions.py through `python -m tokax.evaluate --config`, end to end and offline.

A tiny imagenet2012-shaped tfds dataset (tests/data/tfds_testing.py) stands in for ImageNet, and random
timm ViT-Ti/16 weights laid out as the Hugging Face hub cache lays out vit_tiny_patch16_224.augreg_in21k_ft_in1k
stand in for the AugReg ViT-B/16 checkpoint (same family: 224 px, crop 0.9, bicubic, mean = std = 0.5). What
is compared with timm: the preprocessing (timm.data.create_transform(**resolve_data_config(model)) on the same
JPEG bytes) and the dense predictions and logits (timm's own forward in torch on the same weights).
"""
import io
import math

import jax
import numpy as np
import pytest
from PIL import Image

from data import tfds_testing
from data.tfds_testing import build_tiny_imagenet, tiny_imagenet_examples
from tokax import evaluate, reduction
from tokax.data import transforms
from tokax.models import ViT
from tokax.train.config_utils import load_config_file

NAME = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
NUM_VAL = 8
CONFIG = "tokax:imagenet_reductions.py"


@pytest.fixture(scope="module")
def timm_model(tmp_path_factory):
  """(timm model with random weights, eval mode; HF hub cache dir holding them as NAME's model.safetensors)."""
  from safetensors.torch import save_file
  from torch_compat import import_timm

  from interop.interop_helpers import randomize_

  timm = import_timm()
  model = timm.create_model(NAME, pretrained=False)
  randomize_(model, seed=5)
  model.eval()
  cache = tmp_path_factory.mktemp("hf_hub")
  repo = cache / f"models--timm--{NAME}"
  (repo / "snapshots" / COMMIT).mkdir(parents=True)
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text(COMMIT)
  save_file({k: v.contiguous() for k, v in model.state_dict().items()},
            str(repo / "snapshots" / COMMIT / "model.safetensors"))
  return model, cache


@pytest.fixture(scope="module")
def tiny_imagenet(tmp_path_factory):
  """{file_format: data_dir} of the tiny imagenet2012-shaped dataset, prepared in both formats tfds writes."""
  out = {}
  for file_format in ("tfrecord", "array_record"):
    data_dir = tmp_path_factory.mktemp(f"tfds_{file_format}")
    build_tiny_imagenet(data_dir, file_format=file_format, num_train=3, num_val=NUM_VAL, num_shards=None)
    out[file_format] = str(data_dir)
  return out


@pytest.fixture
def offline_hub(monkeypatch, timm_model):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("HF_HUB_CACHE", str(timm_model[1]))
  return timm_model


def _timm_inputs(model):
  """(N, 3, 224, 224) float32: timm's eval transform of the validation JPEGs, decoded by PIL."""
  from timm.data import create_transform, resolve_data_config

  transform = create_transform(**resolve_data_config(model=model))
  images = [Image.open(io.BytesIO(e["image"])).convert("RGB") for e in tiny_imagenet_examples("validation", NUM_VAL)]
  return np.stack([transform(image).numpy() for image in images])


def _argv(data_dir, out, *extra):
  arg = f"model={NAME},data=tfds:{tfds_testing.NAME}:validation,batch_size={NUM_VAL},dtype=float32"
  return ["--config", f"{CONFIG}:{arg}", f"--config.data_dir={data_dir}", "--out", str(out), "--no_progress", *extra]


def test_the_default_config_is_toms_augreg_vit_b_with_its_published_rows():
  config = load_config_file(CONFIG)
  assert config.model == "pretrained:vit_base_patch16_224.augreg_in21k_ft_in1k"
  assert (config.data, config.num_examples, config.dtype) == ("tfds:imagenet2012:validation", None, "auto")
  rows = [dict(row) for row in config.reductions]
  assert [row["spec"] for row in rows] == ["none", "tome:13", "pitome:0.9,m0=0.9", "evit:0.7",
                                           f"mctf:16,activate_layers={tuple(range(1, 12))}", "dtome:13"]
  assert [row["paper"]["top1"] for row in rows] == [84.57, 82.60, None, None, None, None]  # ToMe README, ViT-B/16
  assert all(row["paper"]["source"] for row in rows)
  built = [reduction.build(row["spec"]) for row in rows]
  assert built[1] == reduction.ToMe(r=13) and built[1].prop_attn  # the timm patch's default, as ToMe's table
  assert built[2].ratio == 0.9 and built[2].m0 == 0.9
  assert built[3].keep_rate == 0.7 and built[3].fuse_token and built[3].pruning_layers(12) == (3, 6, 9)
  assert built[4].r == 16 and built[4].activate_layers == tuple(range(1, 12))
  # every registry method has a row or a reason under the table
  methods = {row["spec"].split(":")[0] for row in rows} - {"none"}
  assert methods | set(config.left_out) == set(reduction.METHODS) and not methods & set(config.left_out)
  # the weights' preprocessing comes from timm's pretrained cfg for the name (resize 248 bicubic, crop 224, 0.5)
  kwargs, norm = evaluate.timm_architecture("vit_base_patch16_224.augreg_in21k_ft_in1k")
  assert norm == dict(mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=0.9, interpolation="bicubic")
  loaded = evaluate.Loaded(model=ViT(**kwargs), variables=None, description="", **norm)
  assert evaluate.eval_preprocess(loaded) == (
      "decode|resize_center_crop(224, crop_pct=0.9, interpolation='bicubic')|value_range(0, 1)")
  # ToMe's other AugReg rows follow the model argument; a model it has no row for gets empty paper values
  small = load_config_file(f"{CONFIG}:model=vit_small_patch16_224.augreg_in21k_ft_in1k")
  assert [(r["spec"], r["paper"]["top1"]) for r in small.reductions][:2] == [("none", 81.41), ("tome:13", 79.30)]
  large = load_config_file(f"{CONFIG}:model=vit_large_patch16_224.augreg_in21k_ft_in1k")
  assert [(r["spec"], r["paper"]["top1"]) for r in large.reductions][:2] == [("none", 85.82), ("tome:7", 84.26)]
  for other in ("vit_base_patch16_224.augreg2_in21k_ft_in1k", NAME):
    assert all(r["paper"]["top1"] is None for r in load_config_file(f"{CONFIG}:model={other}").reductions)


def test_the_table_shows_the_published_top1_and_the_difference():
  config = load_config_file(CONFIG)
  rows = [dict(method="dense" if r["spec"] == "none" else r["spec"], tokens=197, gflops_per_image=35.0,
               images_per_s=None, top1=0.8461, top5=0.97, agreement=1.0, paper=dict(r["paper"]))
          for r in config.reductions]
  lines = evaluate.to_markdown(rows).splitlines()
  assert lines[0].endswith("| agreement with dense | paper top-1 | top-1 - paper |")
  assert lines[2] == "| dense | 197 | 35.000 | - | 84.6% | 97.0% | 100.0% | 84.57% | +0.04 |"
  assert lines[3].endswith("| 100.0% | 82.60% | +2.01 |")
  assert lines[4].endswith("| 100.0% | - | - |")
  assert evaluate.to_markdown(rows, random_weights=True).splitlines()[2].endswith("| 84.57% | - |")
  plain = evaluate.to_markdown([{k: v for k, v in row.items() if k != "paper"} for row in rows])
  assert "paper" not in plain  # without a config's paper values the table is the one it always was


def test_flags_override_the_config_and_config_fields_are_checked(tmp_path):
  args = evaluate.parse_args(["--config", f"{CONFIG}:num_examples=100", "--config.batch_size=10", "--batch_size",
                              "4", "--out", str(tmp_path)])
  assert (args.batch_size, args.num_examples, args.dtype) == (4, 100, "auto")  # the flag wins over --config.x
  assert args.model == "pretrained:vit_base_patch16_224.augreg_in21k_ft_in1k"
  args = evaluate.parse_args(["--config", CONFIG, "--config.batch_size=10", "--config.data_dir=/d", "--out", "o"])
  assert (args.batch_size, args.data_dir) == (10, "/d")
  with pytest.raises(ValueError, match=r"--config.batch_sise: the config has no field 'batch_sise'"):
    evaluate.parse_args(["--config", CONFIG, "--config.batch_sise=10"])
  with pytest.raises(ValueError, match=r"--config.batch_size=ten"):
    evaluate.parse_args(["--config", CONFIG, "--config.batch_size=ten"])
  bad = tmp_path / "bad.py"
  bad.write_text("import ml_collections\ndef get_config(arg=None):\n  return ml_collections.ConfigDict("
                 "dict(model='timm:vit_tiny_patch16_224', total_steps=3))\n")
  with pytest.raises(ValueError, match=r"fields \['total_steps'\] are no tokax.evaluate flags"):
    evaluate.parse_args(["--config", str(bad)])


def test_resize_center_crop_is_torchvisions_resize_and_center_crop():
  """ImageNet-like sizes (downscaling, odd margins, truncated long sides) and timm's crop_pct values."""
  from torch_compat import import_timm

  import_timm()  # torchvision beside a CPU-only torch needs its fix first
  from torchvision import transforms as tv

  rng = np.random.default_rng(0)
  for (height, width), crop_pct, interpolation in (((375, 500), 0.9, "bicubic"), ((500, 333), 0.875, "bicubic"),
                                                   ((249, 600), 1.0, "bilinear"), ((248, 248), 0.9, "bicubic"),
                                                   ((231, 229), 0.9, "bicubic")):
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    scale = math.floor(224 / crop_pct)  # timm's transforms_imagenet_eval
    want = tv.Compose([tv.Resize(scale, interpolation=tv.InterpolationMode(interpolation)), tv.CenterCrop(224)])(
        Image.fromarray(image))
    op = transforms.parse(f"resize_center_crop(224, crop_pct={crop_pct}, interpolation={interpolation!r})")
    got = op({"image": image}, np.random.default_rng(0))["image"]
    np.testing.assert_array_equal(got, np.asarray(want), err_msg=f"{height}x{width} crop_pct {crop_pct}")


@pytest.mark.parametrize("file_format", ["tfrecord", "array_record"])
def test_preprocessing_is_timms_eval_transform(offline_hub, tiny_imagenet, file_format, tmp_path):
  model, _ = offline_hub
  args = evaluate.parse_args(_argv(tiny_imagenet[file_format], tmp_path))
  loaded = evaluate.load_model(args)
  data = evaluate.load_data(args, loaded)
  batch = next(iter(data.batches()))
  assert data.num_examples == NUM_VAL and np.asarray(batch["mask"]).all()
  ours = np.asarray(loaded.input_fn()(batch["image"])).transpose(0, 3, 1, 2)
  theirs = _timm_inputs(model)
  assert ours.shape == theirs.shape == (NUM_VAL, 3, 224, 224)
  # the same pixels (timm's Resize(248, bicubic) sizes, CenterCrop offsets), the same normalisation
  np.testing.assert_array_equal(np.round((ours * 0.5 + 0.5) * 255), np.round((theirs * 0.5 + 0.5) * 255))
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
  labels = [e["label"] for e in tiny_imagenet_examples("validation", NUM_VAL)]
  np.testing.assert_array_equal(batch["label"], labels)


# The end-to-end run keeps the config's first rows (dense, ToMe r=13): each further row is one more CPU compile of
# a 197-token model, and the rows' specs, paper values and buildability are checked above without running them
# (dtome's calibrated row runs end to end in tests/train/test_recipes.py).
_FIRST_ROWS = """
from tokax.train.config_utils import load_config_file


def get_config(arg=None):
  config = load_config_file("{config}:" + arg)
  config.reductions = config.reductions[:2]
  return config
"""


@pytest.mark.slow
def test_the_config_end_to_end_equals_timm_and_carries_the_paper_column(offline_hub, tiny_imagenet, tmp_path, capsys):
  model, _ = offline_hub
  first_rows = tmp_path / "first_rows.py"
  first_rows.write_text(_FIRST_ROWS.format(config=CONFIG))
  argv = _argv(tiny_imagenet["tfrecord"], tmp_path / "out", "--timing", "data")
  argv[1] = argv[1].replace(CONFIG, str(first_rows), 1)
  result = evaluate.main(argv)
  config = load_config_file(f"{CONFIG}:model={NAME}")
  want = [(r["spec"], dict(r["paper"])) for r in config.reductions][:2]
  rows = result["rows"]
  # every row of the config, in its order, with the config's published values
  assert [row["spec"] for row in rows] == [spec for spec, _ in want]
  assert [row["method"] for row in rows] == ["dense"] + [spec for spec, _ in want[1:]]
  assert [row["paper"] for row in rows] == [paper for _, paper in want]
  assert [row["tokens"] for row in rows[:2]] == [197, 197 - 12 * 13]  # ToMe r=13: 197 -> 41
  # dense predictions and logits are timm's forward on timm's preprocessing of the same JPEGs
  import torch

  with torch.no_grad():
    timm_logits = model(torch.from_numpy(_timm_inputs(model))).numpy()
  assert np.abs(timm_logits).mean() > 0.1 and len(set(timm_logits.argmax(-1))) > 1  # not a degenerate head
  np.testing.assert_array_equal(result["predictions"]["dense"], timm_logits.argmax(-1))
  args = evaluate.parse_args(argv)
  loaded = evaluate.load_model(args)
  batch = next(iter(evaluate.load_data(args, loaded).batches()))
  logits = jax.jit(loaded.model.apply)(loaded.variables, loaded.input_fn()(batch["image"]))
  np.testing.assert_allclose(np.asarray(logits), timm_logits, rtol=1e-4, atol=1e-4)
  labels = np.array([e["label"] for e in tiny_imagenet_examples("validation", NUM_VAL)])
  assert rows[0]["top1"] == pytest.approx(np.mean(timm_logits.argmax(-1) == labels))
  # the table: published top-1 and the difference, the sources and the left-out methods under it
  table = result["table"]
  assert "| paper top-1 | top-1 - paper |" in table
  assert all(line.endswith(" - | - |") for line in table.splitlines()[2:])  # ToMe published no ViT-Ti row
  printed = capsys.readouterr().out
  markdown = (tmp_path / "out" / "results.md").read_text()
  for spec, paper in want:
    line = f"{'dense' if spec == 'none' else spec} paper top-1: {paper['source']}"
    assert line in printed and line in markdown
  for name, reason in config.left_out.items():
    assert f"left out: {name}: {reason}" in printed and f"left out: {name}: {reason}" in markdown
  assert result["left_out"] == dict(config.left_out)

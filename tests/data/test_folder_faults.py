"""Image folders fail loudly: one class list per dataset (saved with the run, used by evaluate), bad files named,
checked in one pass, or skipped and counted when asked."""
import io
import re

import ml_collections
import numpy as np
import pytest
from PIL import Image

from tokax.data import folder, pipeline, transforms

SIZE = 8


def _png(pixels) -> bytes:
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, format="PNG")
  return out.getvalue()


def _write(path, seed):
  """A random (non-constant) 8x8 PNG at path; returns its pixels."""
  pixels = np.random.default_rng(seed).integers(1, 256, (SIZE, SIZE, 3), dtype=np.uint8)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(_png(pixels))
  return pixels


def _tree(root, layout):
  """layout: {"train/ant": 2, "val/cat": 1, "train/empty": 0, ...} -> that many PNGs per class folder."""
  seed = 0
  for directory, count in layout.items():
    (root / directory).mkdir(parents=True, exist_ok=True)
    for i in range(count):
      seed += 1
      _write(root / directory / f"{i}.png", seed)
  return root


def _labels(name, split, **kwargs):
  it = pipeline.make_iterator(name, split=split, batch_size=1, shuffle=False, drop_remainder=False, num_epochs=1,
                              num_threads=1, preprocess="decode", **kwargs)
  return [int(b["label"][0]) for b in it]


# --- one class list per dataset ---------------------------------------------------------------------

def test_val_split_missing_a_class_keeps_the_train_labels(tmp_path):
  root = _tree(tmp_path, {"train/ant": 1, "train/bee": 1, "train/cat": 1, "val/ant": 1, "val/cat": 2})
  assert _labels(f"folder:{root}", "train") == [0, 1, 2]
  val = pipeline.get_source(f"folder:{root}", "val")
  assert val.classes == ["ant", "bee", "cat"] and val.num_classes == 3 and val.missing_classes == ["bee"]
  assert _labels(f"folder:{root}", "val") == [0, 2, 2]  # per-split classes made cat 1 here
  with pytest.raises(ValueError, match=r"ImageFolder.classes: \['bee'\] appear more than once"):
    folder.ImageFolder(str(root / "val"), classes=["ant", "bee", "bee", "cat"])


def test_extra_or_empty_class_folders_are_errors_naming_them(tmp_path):
  root = _tree(tmp_path / "a", {"train/ant": 1, "train/cat": 1, "val/ant": 1, "val/dog": 1, "val/eel": 1})
  with pytest.raises(ValueError, match=re.escape(f"class folders ['{root}/val/dog', '{root}/val/eel'] are not in "
                                                 "the dataset's class list")):
    pipeline.get_source(f"folder:{root}", "val")
  root = _tree(tmp_path / "b", {"train/ant": 1, "train/bee": 0, "train/cat": 1})
  with pytest.raises(ValueError, match=re.escape(f"class folders without images (.jpg, .jpeg, .png, .bmp, .gif, "
                                                 f".tif, .tiff, .webp): ['{root}/train/bee']; an empty class still "
                                                 "takes a label")):
    pipeline.get_source(f"folder:{root}", "train")
  with pytest.raises(ValueError, match=r"data.classes: applies to image folders .*'digits'"):
    pipeline.get_source("digits", "train", classes=["a"])


def _folder_config(root, **data):
  import importlib.util
  import pathlib

  spec = importlib.util.spec_from_file_location(
      "folder_vit", pathlib.Path(__file__).resolve().parents[2] / "configs" / "folder_vit.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(f"data=folder:{root},runlocal")
  config.data.update(data)
  config.eval_batch_size = 2
  config.batch_size = 2
  return config


def _run_config(config, resolved):
  """What config.json holds: the config with the plan's resolved values merged in."""
  saved = config.to_dict()
  for key, value in resolved.items():
    saved[key] = {**saved.get(key, {}), **value} if isinstance(value, dict) else value
  return ml_collections.ConfigDict(saved)


def test_the_run_saves_its_class_list_and_evaluate_labels_with_it(tmp_path):
  """classifier.build resolves data.classes (written to config.json); evaluate's load_data (the CLI's) reads
  another folder with the run's list, where its own folders would have given other labels."""
  from tokax import evaluate
  from tokax.models import ViT
  from tokax.train import run as training
  from tokax.train.tasks import classifier

  root = _tree(tmp_path / "data", {"train/ant": 2, "train/bee": 1, "train/cat": 1, "val/ant": 1, "val/cat": 1})
  config = _folder_config(root)
  plan = classifier.build(config, training.mesh_from_config(config))
  assert plan.resolved["data"] == {"classes": ["ant", "bee", "cat"]}
  assert plan.resolved["model"] == {"num_classes": 3}
  saved = _run_config(config, plan.resolved)
  assert classifier.num_classes_of(saved) == 3
  assert [int(l) for l in classifier.load_split(saved, "val").labels] == [0, 2]

  other = _tree(tmp_path / "other", {"val/bee": 1, "val/cat": 1})  # no train/: alone it would be bee 0, cat 1
  loaded = evaluate.Loaded(model=ViT(variant="Ti/4", width=8, depth=1, num_heads=1, mlp_dim=8, image_size=16,
                                     num_classes=3), variables=None, description="", crop_pct=None, run_config=saved)
  args = evaluate.parse_args(["--model", str(tmp_path), "--data", f"folder:{other}", "--batch_size", "2"])
  data = evaluate.load_data(args, loaded)
  assert data.num_classes == 3
  assert [int(l) for b in data.batches() for l in b["label"][b["mask"]]] == [1, 2]
  args = evaluate.parse_args(["--model", str(tmp_path), "--batch_size", "2"])  # the run's own data, test split
  assert [int(l) for b in evaluate.load_data(args, loaded).batches() for l in b["label"][b["mask"]]] == [0, 2]
  with pytest.raises(ValueError, match=r"num_classes: config.data.num_classes says 4, config.data.classes says 3"):
    classifier.num_classes_of(_run_config(config, {**plan.resolved, "data": {"classes": ["ant", "bee", "cat"],
                                                                              "num_classes": 4}, "model": {}}))


# --- bad files ----------------------------------------------------------------------------------------

def _bad_folder(root):
  """train/{a,b}: 3 good PNGs, one truncated PNG (a/1.png), one empty file (b/1.png)."""
  _tree(root, {"train/a": 1, "train/b": 1})
  (root / "train/a/1.png").write_bytes(_png(np.random.default_rng(9).integers(1, 256, (SIZE, SIZE, 3),
                                                                                dtype=np.uint8))[:60])
  (root / "train/b/1.png").write_bytes(b"")
  _write(root / "train/b/2.png", 11)
  return root


def test_bad_images_are_named_listed_in_one_pass_and_refused_at_open(tmp_path, capsys):
  root = _bad_folder(tmp_path)
  truncated, empty = f"{root}/train/a/1.png", f"{root}/train/b/1.png"
  with pytest.raises(ValueError, match=re.escape(f"1 empty image files (0 bytes) under '{root}/train': "
                                                 f"['{empty}']")):
    pipeline.get_source(f"folder:{root}", "train")
  bad = folder.check(str(root))
  assert [path for path, _ in bad] == [truncated, empty]
  assert bad[1][1] == "an empty file (0 bytes)" and bad[0][1] == "OSError: image file is truncated"
  assert folder.main([str(root)]) == 1
  assert capsys.readouterr().out.splitlines() == [f"{truncated}\t{bad[0][1]}", f"{empty}\t{bad[1][1]}"]
  assert folder.check(str(root / "train" / "b")) == [(empty, "an empty file (0 bytes)")]
  assert folder.check(str(_tree(tmp_path / "good", {"x/y": 2}))) == []

  source = pipeline.get_source(f"folder:{root}", "train", skip_bad_images=True)  # opens; fails when read
  it = pipeline.DataIterator(source, batch_size=4, shuffle=False, num_threads=1, preprocess="decode",
                             skip_bad_images=False)
  with pytest.raises(transforms.BadImageError, match=re.escape(f"decode: {truncated} does not decode: ")):
    next(it)
  with pytest.raises(transforms.BadImageError, match="an encoded image of 3 bytes does not decode: not an image"):
    transforms.parse("decode")({"image": b"abc", "label": 0}, np.random.default_rng(0))


def test_skip_bad_images_replaces_and_counts_in_training_and_masks_in_evaluation(tmp_path):
  from tokax.train import run as training
  from tokax.train.tasks import classifier

  root = _bad_folder(tmp_path)
  config = _folder_config(root, skip_bad_images=True, val_split="train", test_split="train", batch_ops="",
                          preprocess="decode|value_range(0, 1)")
  plan = classifier.build(config, training.mesh_from_config(config))
  config.batch_size = 5
  stream = training.train_stream(config, plan.data, slice(0, 5))
  first = next(stream)
  assert stream.iterator.skip_bad_images and stream.iterator.bad_examples == 2
  order = np.random.default_rng((pipeline._ORDER_SALT, 0, 0)).permutation(5)
  files = [plan.data.source.files[i] for i in order]
  want = []
  for k, path in enumerate(files):  # a bad file becomes the next good one of the epoch's order
    j = k
    while files[j % 5].endswith(("a/1.png", "b/1.png")):
      j += 1
    want.append(np.asarray(Image.open(files[j % 5])))
  np.testing.assert_allclose(first["image"], np.stack(want) / 255.0, atol=1e-6)
  assert set(first) == {"image", "label"}

  batches = classifier.eval_batches(config, plan.data.source)
  masks = [b["mask"] for b in batches]
  assert batches.bad_examples == 2
  np.testing.assert_array_equal(np.concatenate(masks), [True, False, True, False, True, False])  # 5 + 1 padding

  from tokax import evaluate
  from tokax.models import ViT

  loaded = evaluate.Loaded(model=ViT(variant="Ti/4", width=8, depth=1, num_heads=1, mlp_dim=8, image_size=16,
                                     num_classes=2), variables=None, description="", crop_pct=None)
  argv = ["--model", str(tmp_path), "--data", f"folder:{root}", "--split", "train", "--batch_size", "2"]
  with pytest.raises(ValueError, match=re.escape(f"1 empty image files (0 bytes) under '{root}/train'")):
    evaluate.load_data(evaluate.parse_args(argv), loaded)
  data = evaluate.load_data(evaluate.parse_args([*argv, "--skip_bad_images"]), loaded)
  assert [m.tolist() for m in (b["mask"] for b in data.batches())] == [[True, False], [True, False], [True, False]]
  assert data.bad_examples() == 2
  with pytest.raises(ValueError, match=r"--skip_bad_images: applies to folder:<root> data .* --data 'digits'"):
    evaluate.load_data(evaluate.parse_args(["--model", "x", "--data", "digits", "--skip_bad_images"]), loaded)

  workers = pipeline.DataIterator(plan.data.source, batch_size=5, num_workers=1, shuffle=False, preprocess="decode")
  assert set(next(workers)) == {"image", "label"} and workers.bad_examples == 2  # the count crosses processes
  workers.close()

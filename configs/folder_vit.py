r"""A small ViT on an image folder (root/<class>/<image>) or a tfds dataset, through tokax.data.pipeline.

Images are decoded, resized and mapped to [0, 1] by config.data.preprocess (train, random crop and
flip) / preprocess_eval; config.data.batch_ops adds mixup / cutmix (num_classes is filled in, and
config.label_smoothing smooths the mixed targets as timm does). The data position (epoch, batch)
is saved with every checkpoint, so a restarted run continues on exactly the same batches.

  # an image folder with train/ and val/ subfolders (val/ also serves as the test split):
  python -m tokax.train --config configs/folder_vit.py:data=folder:/data/flowers --workdir /tmp/folder_vit
  # a prepared tfds dataset (tfds build mnist --file_format=array_record), test split for val and test:
  python -m tokax.train --config configs/folder_vit.py:data=tfds:mnist --workdir /tmp/mnist_vit \
      --config.data.val_split=test --config.data.num_classes=10
  # runlocal: a few steps of a 1-layer model at 16 px, with mixup
  python -m tokax.train --config configs/folder_vit.py:data=folder:/tmp/tiny,runlocal --workdir /tmp/fv_local

Class labels: the train split's class folders, sorted (data.classes pins the list; config.json records
it, and val/test, restoring and `python -m tokax.evaluate` use it: a class missing from val/ shifts
nothing; an extra or empty class folder is an error). Unreadable images fail naming the file
(`python -m tokax.data.folder ROOT` lists them all); data.skip_bad_images=True replaces them and counts
them instead. data.num_workers > 0 decodes in that many processes instead of data.num_threads threads.

Arguments (`:key=value,flag`): data (the data.name; default "folder:/data/images"), variant
(default "Ti/4"), image_size (default 32), runlocal.
"""
import ml_collections

from tokax.train.config_utils import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, data="folder:/data/images", variant="Ti/4", image_size=32, runlocal=False)
  size = 16 if arg.runlocal else arg.image_size
  config = ml_collections.ConfigDict()
  config.seed = 0

  optional_int = lambda: ml_collections.config_dict.placeholder(int)
  config.data = dict(
      name=arg.data, seed=0, data_dir=ml_collections.config_dict.placeholder(str),
      train_split="train", val_split="val", test_split="val", num_classes=optional_int(),
      num_train=optional_int(), num_val=optional_int(), num_test=optional_int(), num_threads=8, num_workers=0,
      classes=(), skip_bad_images=False,
      preprocess=f"decode|resize({size + size // 8})|random_crop({size})|flip_lr|value_range(0, 1)",
      preprocess_eval=f"decode|resize({size})|value_range(0, 1)",
      batch_ops="mixup_cutmix(mixup_alpha=0.8, cutmix_alpha=1.0)")
  config.augment = dict(max_shift=0)

  # ViT(**fields) (tokax.train.model.MODELS[name]); num_classes: the data's (or data.num_classes) when unset.
  config.model = dict(
      name="vit", num_classes=optional_int(), variant=arg.variant, image_size=size, pool="gap", drop_path=0.1,
      dtype="float32", width=192, depth=6, num_heads=3, mlp_dim=768, attention="auto", interpret=False)
  # A tokax.reduction.build spec; a string, so --config.reduction=tome:16 (or evit:0.7, ...) overrides it.
  config.reduction = "none"

  config.batch_size = 64
  config.total_steps = ml_collections.config_dict.placeholder(int)
  config.total_epochs = ml_collections.config_dict.placeholder(float)
  config.total_epochs = 30.0
  config.warmup_steps = ml_collections.config_dict.placeholder(int)
  config.warmup_epochs = ml_collections.config_dict.placeholder(float)
  config.warmup_epochs = 2.0
  config.lr = 1e-3
  config.weight_decay = 0.05
  config.grad_clip_norm = 1.0
  config.label_smoothing = 0.1

  config.mesh = dict(data=-1, model=1)
  config.sharding = dict(preset="replicated", rules=())
  config.distributed = False

  config.log_every_steps = 50
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 2
  config.eval_batch_size = 128
  config.progress_bar = True

  if arg.runlocal:
    config.model.update(width=32, depth=1, num_heads=2, mlp_dim=64, drop_path=0.0)
    config.batch_size = 8
    config.total_epochs = None
    config.total_steps = 4
    config.warmup_epochs = None
    config.warmup_steps = 1
    config.log_every_steps = 1
    config.eval_every_steps = 2
    config.checkpoint_every_steps = 2
    config.eval_batch_size = 8
    config.data.num_threads = 2
  return config

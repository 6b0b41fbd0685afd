"""The DeiT preprocess ops against timm / torchvision, given the same draws.

A Recorder wraps the example's numpy Generator and logs each draw; a Replay serves those draws, in
order, to timm's `random` / `np.random` / torch calls, checking that each asks for the same kind of
draw over the same range. So every comparison below is "same draws in, same pixels out", and the
check that the draw sequences line up call for call is what makes the distributions timm's.
"""
import importlib.util
import random as pyrandom
from collections import Counter

import numpy as np
import pytest

from tokax.data import rand_augment as ra
from tokax.data import transforms

torch = pytest.importorskip("torch")
if importlib.util.find_spec("timm") is None:  # importorskip("timm") would import it without torch_compat's fix
  pytest.skip("timm is not installed", allow_module_level=True)

from PIL import Image  # noqa: E402

FILL = (124, 116, 104)
ALL_RA_OPS = sorted({*ra.RAND_OPS, *ra.RAND_INCREASING_OPS, *ra.UNIFORM_SETS["3a"]})


@pytest.fixture(scope="module")
def timm_data():
  """(timm.data.auto_augment, timm.data.transforms, timm.data.random_erasing, timm.data, torchvision transforms)."""
  from torch_compat import import_timm

  import_timm()
  import timm.data  # noqa: PLC0415
  import torchvision.transforms.transforms as tv_transforms  # noqa: PLC0415
  from timm.data import auto_augment, random_erasing  # noqa: PLC0415
  from timm.data import transforms as timm_transforms  # noqa: PLC0415

  return auto_augment, timm_transforms, random_erasing, timm.data, tv_transforms


def _photo(height, width, seed):
  """(H, W, 3) uint8: gradients, a wave and noise in [20, 230], so AutoContrast / Equalize have work to do."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width].astype(np.float64)
  base = np.stack([60 + 100 * x / width, 40 + 150 * y / height, 120 + 60 * np.sin(x / 5 + y / 7)], -1)
  return np.clip(base + rng.normal(0, 14, (height, width, 3)), 20, 230).astype(np.uint8)


class Recorder:
  """A numpy Generator that logs (method, args, kwargs, value) for each draw."""

  def __init__(self, seed):
    self._rng, self.log = np.random.default_rng(seed), []

  def __getattr__(self, method):
    draw = getattr(self._rng, method)

    def call(*args, **kwargs):
      value = draw(*args, **kwargs)
      self.log.append((method, args, kwargs, value))
      return value
    return call


class Replay:
  """A Recorder's draws for timm's `random` module, np.random.choice and torchvision's torch calls."""

  def __init__(self, log):
    self.queue = list(log)

  def take(self, *methods):
    assert self.queue, f"timm drew {methods} after tokax's last draw"
    method, args, kwargs, value = self.queue.pop(0)
    assert method in methods, f"timm asked for {methods}; tokax drew {method}{args}"
    return args, kwargs, value

  def done(self):
    assert not self.queue, f"tokax drew more than timm: {[q[:2] for q in self.queue]}"

  # Python's random module
  def random(self):
    return float(self.take("random")[2])

  def uniform(self, a, b):
    args, _, value = self.take("uniform")
    np.testing.assert_allclose(args, (a, b), rtol=1e-6)
    return float(value)

  def randint(self, a, b):  # inclusive b
    args, _, value = self.take("integers")
    assert ((0, args[0]) if len(args) == 1 else tuple(args)) == (a, b + 1)
    return int(value)

  def gauss(self, mu, sigma):
    args, _, value = self.take("normal")
    assert tuple(args) == (mu, sigma)
    return float(value)

  def choice(self, seq):
    args, _, value = self.take("integers")
    assert args == (len(seq),)
    return seq[int(value)]

  # np.random.choice as timm's RandAugment calls it
  def np_choice(self, a, size, replace=True, p=None):
    if p is None:
      args, kwargs, value = self.take("integers")
      assert replace and args == (len(a),) and kwargs["size"] == size
    else:
      args, kwargs, value = self.take("choice")
      assert not replace and args == (len(a),) and kwargs["size"] == size
      np.testing.assert_allclose(kwargs["p"], p, rtol=1e-12)
    return [a[int(i)] for i in value]


class ReplayTorch:
  """torchvision.transforms.transforms' `torch`: empty(1).uniform_, randint and rand answered by a Replay."""

  def __init__(self, replay):
    self.replay = replay

  def __getattr__(self, name):
    return getattr(torch, name)

  def empty(self, *size):
    replay = self.replay

    class Uniform:
      def uniform_(self, a, b):
        args, _, value = replay.take("uniform")
        np.testing.assert_allclose(args, (float(a), float(b)), rtol=1e-6)  # torchvision's bounds are float32
        return torch.tensor([value], dtype=torch.float64)
    return Uniform()

  def randint(self, low, high, size):
    args, _, value = self.replay.take("integers")
    assert (low, high) == (0, args[0])
    return torch.tensor([int(value)])

  def rand(self, *size):
    return torch.tensor([self.replay.random()], dtype=torch.float64)


# --- RandAugment ---------------------------------------------------------------------------------


class LayerScript:
  """timm's `random` during one AugmentOp call, answering with a Layer's draws; logs what timm asked for."""

  def __init__(self, layer):
    self.layer, self.calls = layer, []

  def random(self):
    self.calls.append("random")
    if len(self.calls) == 1:
      return 0.25  # the apply draw: applied when <= p (0.5)
    return 0.75 if self.layer.negate else 0.25  # the sign draw: > 0.5 negates

  def gauss(self, mu, sigma):
    self.calls.append("gauss")
    return self.layer.magnitude

  def choice(self, seq):
    self.calls.append("choice")
    assert tuple(seq) == (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)
    return seq[ra.RANDOM_INTERPOLATIONS.index(self.layer.interpolation)]


@pytest.mark.parametrize("name", ALL_RA_OPS)
def test_rand_augment_each_op_equals_timm(timm_data, monkeypatch, name):
  """Given magnitude (noisy, clamped), sign and interpolation, each op equals timm's AugmentOp bit for bit."""
  aa = timm_data[0]
  image = _photo(37, 53, seed=len(name))
  cfg = ra.RandAugmentConfig(fill=FILL, interpolation="random")
  op = aa.AugmentOp(name, prob=0.5, magnitude=9, hparams=dict(translate_const=100, img_mean=FILL, magnitude_std=0.5))
  expected_calls = ["random", "gauss"] + ["random"] * (name in ra.SIGNED_OPS) + ["choice"] * (name in ra.GEOMETRIC_OPS)
  changed = 0
  for magnitude in (-0.7, 0.0, 2.5, 9.0, 9.46, 10.0, 11.2):
    for negate in (False, True):
      for interpolation in (ra.RANDOM_INTERPOLATIONS if name in ra.GEOMETRIC_OPS else (None,)):
        layer = ra.Layer(name, True, magnitude, negate, interpolation)
        mine = ra.apply_layers(image, [layer], cfg)
        script = LayerScript(layer)
        monkeypatch.setattr(aa, "random", script)
        assert mine.dtype == np.uint8 and mine.shape == image.shape
        if name.startswith("Posterize") and ra.op_argument(layer, cfg) <= 0:
          # Pillow 13's ImageOps.posterize raises for 0 bits (timm then fails); its mask for 0 bits, the
          # one older Pillow applied unchecked, and TF's shift by 8 both give black
          with pytest.raises(ValueError, match="bits must be"):
            op(Image.fromarray(image))
          np.testing.assert_array_equal(mine, 0)
          continue
        theirs = np.asarray(op(Image.fromarray(image)))
        assert script.calls == expected_calls, (name, script.calls)
        np.testing.assert_array_equal(mine, theirs, err_msg=f"{layer}")
        changed += not np.array_equal(mine, image)
  assert changed >= 4, f"{name} left the image unchanged too often ({changed})"
  if name == "Rotate":  # a 30 degree turn brings the fill colour in at the corners
    corner = ra.apply_layers(image, [ra.Layer(name, True, 10.0, False, "bicubic")], cfg)[0, 0]
    np.testing.assert_array_equal(corner, FILL)


CONFIGS = [("rand-m9-mstd0.5-inc1", "random"), ("rand-m9-mstd0.5-inc1", "bicubic"), ("rand-m9-mstd0.5", "random"),
           ("rand-m7-n4-p0.8-mstd101", "bilinear"), ("rand-m9-n3-mstd0.5-tweights", "random"),
           ("rand-m8-mmax12-mstd2-t3aw", "random"), ("rand-m10-p1.0-t3a", "bicubic")]


@pytest.mark.parametrize("config,interpolation", CONFIGS)
def test_rand_augment_pipeline_equals_timm_randaugment(timm_data, monkeypatch, config, interpolation):
  """The whole op given the same draws (op indices, apply, magnitude noise, sign, interpolation) == timm's."""
  aa = timm_data[0]
  hparams = dict(translate_const=100, img_mean=FILL)
  if interpolation != "random":
    hparams["interpolation"] = getattr(Image.Resampling, interpolation.upper())
  theirs_op = aa.rand_augment_transform(config, hparams)
  mine_op = transforms.parse(f"rand_augment({config!r}, interpolation={interpolation!r})")
  applied = skipped = 0
  for seed in range(8):
    image = _photo(40, 48, seed)
    recorder = Recorder(seed)
    mine = mine_op({"image": image}, recorder)["image"]
    replay = Replay(recorder.log)
    monkeypatch.setattr(aa, "random", replay)
    monkeypatch.setattr(aa.np.random, "choice", replay.np_choice)
    try:
      theirs = np.asarray(theirs_op(Image.fromarray(image)))
    except ValueError as e:  # Pillow 13 refuses timm's Posterize to 0 bits (test_rand_augment_each_op_equals_timm)
      assert "bits must be" in str(e)
      skipped += 1
      continue
    replay.done()
    np.testing.assert_array_equal(mine, theirs, err_msg=f"{config} seed {seed}")
    applied += not np.array_equal(mine, image)
  assert applied >= 4 and skipped <= 2


def test_rand_augment_config_strings_read_as_timm(timm_data):
  aa = timm_data[0]
  for config in ("rand-m9-mstd0.5-inc1", "rand-m9-mstd0.5", "rand-n3-m5-p0.3", "rand-m9-mstd101-mmax12",
                 "rand-m6-tweights", "rand-inc1-t3a", "rand-t3aw-n4", "rand"):
    theirs = aa.rand_augment_transform(config, dict(translate_const=100, img_mean=FILL))
    mine = ra.parse_config(config)
    assert mine.ops == tuple(op.name for op in theirs.ops), config
    assert mine.num_layers == theirs.num_layers
    op = theirs.ops[0]
    assert (mine.prob, mine.magnitude, mine.magnitude_std) == (op.prob, op.magnitude, op.magnitude_std), config
    assert mine.magnitude_max == (op.magnitude_max or 10)
    if theirs.choice_weights is None:
      assert mine.weights is None
    else:
      np.testing.assert_allclose(mine.weights, theirs.choice_weights, rtol=1e-12)
  for bad, what in (("rand-m9-foo", "'foo'"), ("rand-m9-x3", "'x'"), ("rand-tfoo", "tfoo"), ("rand-m9.5", "an int"),
                    ("augmix-m5", "'augmix'"), ("rand-p1.5", "p must be"), ("rand-n16-tweights", "without replacement"),
                    ("rand--m9", "''")):
    with pytest.raises(ValueError, match=f"rand_augment: config .*{what}"):
      transforms.parse(f"rand_augment({bad!r})")
  with pytest.raises(ValueError, match="rand_augment: interpolation"):
    transforms.parse("rand_augment(interpolation='lanczos')")
  with pytest.raises(ValueError, match="rand_augment: fill"):
    transforms.parse("rand_augment(fill=(1, 2))")
  with pytest.raises(ValueError, match="rand_augment: needs the .* uint8 image.*before normalize"):
    transforms.parse("normalize|rand_augment")({"image": _photo(8, 8, 0)}, np.random.default_rng(0))


class TimmDrawLog:
  """timm's `random` (a seeded random.Random) that logs each call into the current op's entry."""

  def __init__(self, seed):
    self._random, self.ops = pyrandom.Random(seed), []

  def __getattr__(self, method):
    draw = getattr(self._random, method)

    def call(*args):
      value = draw(*args)
      self.ops[-1].append((method, value))
      return value
    return call


@pytest.mark.parametrize("config", ["rand-m9-mstd0.5-inc1", "rand-m9-n3-mstd101-tweights"])
def test_rand_augment_draw_distribution_matches_timm(timm_data, monkeypatch, config):
  """Op choice, apply rate, magnitude noise, sign and interpolation: tokax's draws vs timm's own, 2000 images each."""
  aa, n = timm_data[0], 2000
  cfg = ra.parse_config(config)
  rng = np.random.default_rng(0)
  per_image = [ra.draw_layers(cfg, rng) for _ in range(n)]
  mine = [layer for layers in per_image for layer in layers]

  log = TimmDrawLog(0)
  monkeypatch.setattr(aa, "random", log)
  monkeypatch.setattr(aa.np.random, "choice", np.random.RandomState(0).choice)
  theirs_op = aa.rand_augment_transform(config, dict(translate_const=100, img_mean=FILL))
  for op in theirs_op.ops:  # only the geometric ops draw (the interpolation); the others need not run
    if op.name not in ra.GEOMETRIC_OPS:
      op.aug_fn = lambda img, *args, **kwargs: img
  names_per_image = []

  def probe(op):
    def call(img):
      log.ops.append([op.name])
      names_per_image[-1].append(op.name)
      return op(img)
    return call
  theirs_op.ops = [probe(op) for op in theirs_op.ops]
  tiny = Image.new("RGB", (2, 2))
  for _ in range(n):
    names_per_image.append([])
    theirs_op(tiny)

  theirs = []
  for name, *calls in log.ops:
    randoms = [v for m, v in calls if m == "random"]
    gauss_or_uniform = [v for m, v in calls if m in ("gauss", "uniform")]
    applied = randoms[0] <= cfg.prob
    interpolation = [v for m, v in calls if m == "choice"]
    theirs.append(ra.Layer(name, applied, gauss_or_uniform[0] if applied else cfg.magnitude,
                           applied and name in ra.SIGNED_OPS and randoms[1] > 0.5,
                           ra.RANDOM_INTERPOLATIONS[interpolation[0] == Image.Resampling.BICUBIC] if interpolation
                           else None))
  assert len(theirs) == len(mine) == n * cfg.num_layers

  def stats(layers):
    count = Counter(layer.op for layer in layers)
    applied = [layer for layer in layers if layer.applied]
    levels = np.array([min(max(layer.magnitude, 0.0), cfg.magnitude_max) for layer in applied])
    signed = [layer.negate for layer in applied if layer.op in ra.SIGNED_OPS]
    geometric = [layer.interpolation == "bicubic" for layer in applied if layer.op in ra.GEOMETRIC_OPS]
    return ({op: count[op] / len(layers) for op in cfg.ops}, len(applied) / len(layers), levels.mean(), levels.std(),
            np.mean(signed), np.mean(geometric))

  (freq_a, apply_a, mean_a, std_a, neg_a, cubic_a), (freq_b, apply_b, mean_b, std_b, neg_b, cubic_b) = (
      stats(mine), stats(theirs))
  assert max(abs(freq_a[op] - freq_b[op]) for op in cfg.ops) < 0.02, (freq_a, freq_b)
  assert abs(apply_a - apply_b) < 0.03 and abs(apply_a - cfg.prob) < 0.03
  assert abs(mean_a - mean_b) < 0.12 and abs(std_a - std_b) < 0.1, (mean_a, mean_b, std_a, std_b)
  assert abs(neg_a - neg_b) < 0.07 and abs(cubic_a - cubic_b) < 0.08
  if cfg.weights is not None:  # weighted sets choose without replacement, in timm and here
    assert all(len(set(names)) == len(names) for names in names_per_image)
    assert all(len({layer.op for layer in layers}) == len(layers) for layers in per_image)


# --- inception_crop ------------------------------------------------------------------------------


def test_inception_crop_equals_timm_and_torchvision(timm_data, monkeypatch):
  """Box == torchvision's RandomResizedCrop.get_params and timm's; pixels == timm's PIL path bit for bit."""
  from torchvision.transforms import InterpolationMode  # noqa: PLC0415
  from torchvision.transforms import functional as tvf  # noqa: PLC0415

  _, timm_transforms, _, _, tv_transforms = timm_data
  cases = [(dict(), (61, 83), "bilinear"),  # the default op, unchanged call signature
           (dict(interpolation="bicubic"), (61, 83), "bicubic"),
           (dict(scale=(0.25, 0.9), ratio=(0.5, 2.0), interpolation="random"), (70, 50), "random"),
           (dict(area_min=30, area_max=60, interpolation="bicubic"), (50, 70), "bicubic"),
           (dict(scale=(0.95, 1.0), interpolation="bicubic"), (20, 90), "bicubic"),  # every try fails: the fallback
           (dict(scale=(0.95, 1.0), interpolation="bilinear"), (90, 20), "bilinear")]
  worst_tensor_diff = 0
  for kwargs, (h, w), interpolation in cases:
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    op = transforms.parse(f"inception_crop(24{', ' + args if args else ''})")
    scale = kwargs.get("scale", (kwargs.get("area_min", 8) / 100, kwargs.get("area_max", 100) / 100))
    ratio = kwargs.get("ratio", (3 / 4, 4 / 3))
    theirs_op = timm_transforms.RandomResizedCropAndInterpolation(24, scale=scale, ratio=ratio,
                                                                  interpolation=interpolation)
    for seed in range(6):
      image = _photo(h, w, seed)
      recorder = Recorder(seed)
      mine = op({"image": image}, recorder)["image"]
      replay = Replay(recorder.log)
      monkeypatch.setattr(timm_transforms, "random", replay)
      theirs = np.asarray(theirs_op(Image.fromarray(image)))
      replay.done()
      np.testing.assert_array_equal(mine, theirs, err_msg=f"{kwargs} seed {seed}")

      box_rng = Recorder(seed)
      box = transforms.inception_box(h, w, box_rng, scale, ratio)
      replay = Replay(box_rng.log)
      monkeypatch.setattr(timm_transforms, "random", replay)
      assert box == timm_transforms.RandomResizedCropAndInterpolation.get_params(Image.fromarray(image), scale, ratio)
      replay.done()
      replay = Replay(box_rng.log)
      monkeypatch.setattr(tv_transforms, "torch", ReplayTorch(replay))
      tensor = torch.from_numpy(image).permute(2, 0, 1)
      assert box == tuple(tv_transforms.RandomResizedCrop.get_params(tensor, list(scale), list(ratio)))
      replay.done()
      monkeypatch.undo()
      if interpolation != "random":
        mode = getattr(InterpolationMode, interpolation.upper())
        on_pil = np.asarray(tvf.resized_crop(Image.fromarray(image), *box, [24, 24], mode))
        np.testing.assert_array_equal(mine, on_pil)
        on_tensor = tvf.resized_crop(tensor, *box, [24, 24], mode, antialias=True).permute(1, 2, 0).numpy()
        worst_tensor_diff = max(worst_tensor_diff, int(np.abs(on_tensor.astype(int) - mine).max()))
  assert worst_tensor_diff <= 1  # torchvision's tensor resize rounds a little differently from PIL
  with pytest.raises(ValueError, match="inception_crop: give the area range once"):
    transforms.parse("inception_crop(24, area_min=20, scale=(0.2, 1.0))")
  with pytest.raises(ValueError, match="inception_crop: interpolation"):
    transforms.parse("inception_crop(24, interpolation='cubic')")
  with pytest.raises(ValueError, match="inception_crop: ratio"):
    transforms.parse("inception_crop(24, ratio=(1.5, 0.5))")


# --- random_erasing ------------------------------------------------------------------------------


def test_random_erasing_equals_timm(timm_data, monkeypatch):
  """Same draws (erase?, count, area / aspect per try, position, N(0, 1) noise) -> timm's RandomErasing's tensor."""
  _, _, random_erasing, _, _ = timm_data
  seen = Counter()

  def replayed_pixels(replay):
    def get_pixels(per_pixel, rand_color, patch_size, dtype=torch.float32, device="cpu"):
      if not (per_pixel or rand_color):
        return torch.zeros((patch_size[0], 1, 1), dtype=dtype)
      args, kwargs, value = replay.take("standard_normal")
      chw = torch.from_numpy(np.ascontiguousarray(value.transpose(2, 0, 1)))
      assert tuple(chw.shape) == (tuple(patch_size) if per_pixel else (patch_size[0], 1, 1)) and chw.dtype == dtype
      return chw
    return get_pixels

  for prob, mode, max_count, (h, w) in ((0.25, "pixel", 1, (24, 40)), (1.0, "pixel", 1, (30, 9)),
                                        (1.0, "rand", 3, (24, 40)), (0.5, "const", 2, (16, 16))):
    op = transforms.parse(f"random_erasing({prob}, mode={mode!r}, max_count={max_count})")
    theirs_op = random_erasing.RandomErasing(prob, mode=mode, max_count=max_count, device="cpu")
    for seed in range(12):
      image = np.random.default_rng(100 + seed).standard_normal((h, w, 3)).astype(np.float32)
      recorder = Recorder(seed)
      mine = op({"image": image}, recorder)["image"]
      replay = Replay(recorder.log)
      monkeypatch.setattr(random_erasing, "random", replay)
      monkeypatch.setattr(random_erasing, "_get_pixels", replayed_pixels(replay))
      theirs = theirs_op(torch.from_numpy(image.transpose(2, 0, 1).copy())).permute(1, 2, 0).numpy()
      replay.done()
      np.testing.assert_array_equal(mine, theirs, err_msg=f"{prob} {mode} {max_count} seed {seed}")
      tries = sum(m == "uniform" for m, *_ in recorder.log) // 2
      boxes = sum(m == "integers" and len(a) == 1 for m, a, *_ in recorder.log) // 2  # (top, left) per box
      seen["erased"] += boxes > 0
      seen["skipped"] += not tries
      seen["rejected tries"] += tries > boxes
  assert seen["erased"] >= 10 and seen["skipped"] >= 5 and seen["rejected tries"] >= 3, seen

  for bad, what in (("random_erasing(1.5)", "prob must be in"), ("random_erasing(-0.1)", "prob must be in"),
                    ("random_erasing(mode='zero')", "mode must be one of"),
                    ("random_erasing(min_count=3, max_count=2)", "min_count 3 > max_count 2"),
                    ("random_erasing(max_area=1.5)", "max_area")):
    with pytest.raises(ValueError, match=f"random_erasing: .*{what}"):
      transforms.parse(bad)
  with pytest.raises(ValueError, match=r"random_erasing: got a uint8 .*after normalize: '.*\|normalize\|random_"):
    transforms.parse("random_erasing(1.0)|normalize")({"image": _photo(8, 8, 0)}, np.random.default_rng(0))


# --- the DeiT recipe end to end ------------------------------------------------------------------


def test_deit_train_preprocess_equals_timm_create_transform(timm_data, monkeypatch):
  """DeiT's string == timm.data.create_transform(DeiT's arguments) given the same draws, over all five stages."""
  aa, timm_transforms, random_erasing, timm_data_pkg, tv_transforms = timm_data
  size = 32
  mine_op = transforms.parse(f"inception_crop({size}, interpolation='bicubic')|flip_lr|"
                             "rand_augment('rand-m9-mstd0.5-inc1', interpolation='bicubic')|"
                             "normalize|random_erasing(0.25)")
  theirs_op = timm_data_pkg.create_transform(size, is_training=True, color_jitter=0.4,
                                             auto_augment="rand-m9-mstd0.5-inc1", interpolation="bicubic",
                                             re_prob=0.25, re_mode="pixel", re_count=1)
  erased = 0
  for seed in range(10):
    image = _photo(50, 64, seed)
    recorder = Recorder(seed)
    mine = mine_op({"image": image}, recorder)["image"]
    replay = Replay(recorder.log)
    for module in (aa, timm_transforms, random_erasing):
      monkeypatch.setattr(module, "random", replay)
    monkeypatch.setattr(aa.np.random, "choice", replay.np_choice)
    monkeypatch.setattr(tv_transforms, "torch", ReplayTorch(replay))
    monkeypatch.setattr(random_erasing, "_get_pixels", lambda per_pixel, rand_color, patch_size, dtype, device: (
        torch.from_numpy(np.ascontiguousarray(replay.take("standard_normal")[2].transpose(2, 0, 1)))))
    theirs = theirs_op(Image.fromarray(image)).permute(1, 2, 0).numpy()
    replay.done()
    monkeypatch.undo()
    assert mine.shape == (size, size, 3) and mine.dtype == np.float32
    # tokax's normalize computes (x - 255 mean) / (255 std), timm's (x / 255 - mean) / std: float rounding only
    np.testing.assert_allclose(mine, theirs, atol=2e-6, rtol=0, err_msg=f"seed {seed}")
    erased += any(m == "standard_normal" for m, *_ in recorder.log)
  assert erased >= 1


# --- registering ops -----------------------------------------------------------------------------


def test_register_op_and_typos(monkeypatch):
  monkeypatch.setattr(transforms, "EXAMPLE_OPS", dict(transforms.EXAMPLE_OPS))
  monkeypatch.setattr(transforms, "BATCH_OPS", dict(transforms.BATCH_OPS))

  @transforms.register_op("add_noise")
  def add_noise(std=1.0):
    return lambda example, rng: {**example, "image": example["image"] + np.float32(std) * rng.standard_normal(
        example["image"].shape, dtype=np.float32)}

  image = _photo(6, 5, 1)
  out = transforms.parse("normalize|add_noise(0.5)")({"image": image}, np.random.default_rng(3))["image"]
  rng = np.random.default_rng(3)
  base = transforms.normalize()({"image": image}, rng)["image"]
  np.testing.assert_allclose(out, base + 0.5 * rng.standard_normal(image.shape, dtype=np.float32), rtol=1e-6)

  def scale_labels(factor):
    return lambda batch, rng: {**batch, "label": batch["label"] * factor}
  assert transforms.register_batch_op("scale_labels", scale_labels) is scale_labels
  batch = transforms.parse_batch("scale_labels(3)")({"label": np.array([1, 2])}, np.random.default_rng(0))
  np.testing.assert_array_equal(batch["label"], [3, 6])

  transforms.register_op("add_noise", add_noise)  # the same factory again: a no-op
  with pytest.raises(ValueError, match="register_op: example op 'add_noise' is already registered.*replace=True"):
    transforms.register_op("add_noise", lambda: None)
  transforms.register_op("add_noise", scale_labels, replace=True)
  assert transforms.EXAMPLE_OPS["add_noise"] is scale_labels
  with pytest.raises(ValueError, match="register_op: 'normalize' is a built-in op"):
    transforms.register_op("normalize", add_noise, replace=True)
  with pytest.raises(ValueError, match="register_batch_op: 'add_noise' is already an example op"):
    transforms.register_batch_op("add_noise", add_noise)
  with pytest.raises(TypeError, match=r"register_op\('jitter', ...\): expected a callable factory"):
    transforms.register_op("jitter", 0.1)
  with pytest.raises(ValueError, match="register_op: the name must be a Python identifier"):
    transforms.register_op("my-op", add_noise)
  transforms.register_op("broken", lambda: 3)
  with pytest.raises(ValueError, match="preprocess: example op 'broken' built int, not a callable"):
    transforms.parse("broken")

  with pytest.raises(ValueError, match=r"unknown example op 'flip_rl'; did you mean 'flip_lr'\? known: \[.*"
                                       r"'rand_augment'.*'random_erasing'.*register_op"):
    transforms.parse("decode|flip_rl|normalize")
  with pytest.raises(ValueError, match=r"unknown batch op 'mixup_cutmx'; did you mean 'mixup_cutmix'"):
    transforms.parse_batch("mixup_cutmx(num_classes=10)")
  with pytest.raises(ValueError, match="unknown example op 'rotate'"):
    transforms.parse("rotate(3)")

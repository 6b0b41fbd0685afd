"""The `gpu` configs of the cluttered-digits evidence run: sizes, schedules, and teachers equal to the dense gpu run."""
import jax
import jax.numpy as jnp
import pytest

from tokax.bench import sweep
from tokax.data import offline
from tokax.reduction import Slim
from tokax.train.tasks import classifier
from tokax.train.config_utils import load_config_file

VIT = "configs/cluttered_digits_vit.py"
FINE_TUNES = ("sit", "mctf", "deit_distill")


def _start(name, mode):
  """The config of the dense run a fine-tune starts from / distils from: the fine-tune's `dense` mode (the
  evidence script trains cluttered_digits_vit.py with the same mode and passes that workdir; the fine-tune
  rebuilds it from the workdir's config.json)."""
  return load_config_file(f"configs/cluttered_digits_{name}.py:{mode},dense")


@pytest.mark.parametrize("mode", ["gpu", "gpu,runlocal"])
@pytest.mark.parametrize("name", FINE_TUNES)
def test_fine_tune_teacher_is_the_dense_gpu_run(name, mode):
  config = load_config_file(f"configs/cluttered_digits_{name}.py:{mode}")
  dense = load_config_file(f"{VIT}:{mode}")
  teacher = _start(name, mode)
  assert teacher.model.to_dict() == dense.model.to_dict()
  assert teacher.data.to_dict() == dense.data.to_dict() == config.data.to_dict()
  assert dict(teacher.reduction) == {"name": "none", "r": 0, "prop_attn": False}
  assert not any(key in teacher for key in ("distill", "consistency", "init_from"))
  expected = {k: v for k, v in dense.model.items() if k != "distilled"}
  assert {k: v for k, v in config.model.items() if k != "distilled"} == expected | (
      {"depth": 2} if name == "sit" and "runlocal" in mode else {})
  # the run to start from is named by its workdir only (no config file to re-run)
  spec = config.distill if "distill" in config else config.init_from
  assert "config" not in spec and not spec.get("teacher_config")


def test_dense_gpu_config_is_vit_s8_at_197_tokens():
  config = load_config_file(f"{VIT}:gpu")
  model = classifier.model_from_config(config, offline.NUM_CLASSES)
  assert (model.arch.width, model.arch.depth, model.arch.num_heads, model.arch.mlp_dim) == (384, 12, 6, 1536)
  assert (config.model.image_size // model.arch.patch_size) ** 2 + 1 == 197
  assert config.model.dtype == "bfloat16" and config.batch_size == 128
  cpu = load_config_file(VIT)  # the CPU default is unchanged
  assert (cpu.model.variant, cpu.model.width, cpu.model.depth, cpu.total_steps) == ("Ti/8", 64, 4, 1200)


def test_gpu_students_reduce_as_specified():
  sit = classifier.model_from_config(load_config_file("configs/cluttered_digits_sit.py:gpu"), 10)
  assert isinstance(sit.reduction, Slim)
  counts = sit.reduction.layer_counts(12, 196)  # patch tokens after each block
  assert [counts[i] for i in (2, 5, 8, 11)] == [98, 49, 24, 24] and counts[1] == 196
  mctf_config = load_config_file("configs/cluttered_digits_mctf.py:gpu")
  mctf = classifier.model_from_config(mctf_config, 10)
  image = (112, 112, 3)
  params = jax.eval_shape(mctf.init, jax.random.key(0), jax.ShapeDtypeStruct((1, *image), jnp.float32))
  assert sweep.layer_token_counts(mctf, params, image) == tuple(197 - 8 * (i + 1) for i in range(12))
  assert max(mctf_config.consistency.teacher_r) < mctf_config.reduction.r


def test_t2t7_and_vit_ti_have_similar_gflops():
  t2t = classifier.model_from_config(load_config_file("configs/cluttered_digits_t2t.py:gpu"), 10)
  vit = classifier.model_from_config(load_config_file(
      f"{VIT}:gpu,variant=Ti/16,width=192,depth=12,heads=3,image_size=224"), 10)
  image = (224, 224, 3)
  gflops = []
  for model in (t2t, vit):
    params = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, *image), jnp.float32))
    gflops.append(sweep.forward_gflops(model, params, (1, *image)))
  assert 0.7 < gflops[0] / gflops[1] < 1.3, gflops  # T2T-ViT-7 ~1.1, ViT-Ti/16 ~1.3 GFLOPs (MAC convention)


def test_sweep_gpu_config_points_at_the_gpu_runs():
  config = load_config_file("configs/sweep_cluttered_digits.py:gpu")
  assert config.checkpoint.config == f"{VIT}:gpu" and not config.checkpoint.train
  assert set(config.methods.tome_noprop) <= set(config.methods.tome)  # prop-attn on and off at the same r
  for name, spec in config.trained.items():
    assert dict(spec) == {"workdir": ""}, name  # each trained run is rebuilt from its own config.json

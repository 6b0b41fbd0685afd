"""Throughput measurement and XLA's FLOP count: ToMe costs less, dense matches the closed form."""
import functools
import json

import jax
import jax.numpy as jnp
import pytest

from tokax.bench import throughput
from tokax.models import ViT
from tokax.reduction import ToMe, token_counts

from random_variables import random_variables


def vit_forward_flops(*, image_size, patch, width, depth, mlp_dim, num_classes, tokens_per_layer=None):
  """Closed-form matmul FLOPs (2 per multiply-add) of one image through a ViT with a class token.

  Patch embedding, then per block qkv (6 N C^2), attention logits and weighted sum (4 N^2 C),
  projection (2 N C^2) and MLP (4 N C M), then the head. With ToMe, block l's attention runs on
  the tokens before its merge and its MLP on the tokens after.
  """
  patches = (image_size // patch) ** 2
  n = patches + 1
  flops = 2 * patches * patch * patch * 3 * width
  for layer in range(depth):
    n_after = n if tokens_per_layer is None else tokens_per_layer[layer]
    flops += 6 * n * width**2 + 4 * n**2 * width + 2 * n * width**2 + 4 * n_after * width * mlp_dim
    n = n_after
  return flops + 2 * width * num_classes


DEPTH = 3  # a 3-block Ti/8: the closed form per block is the same at any depth, and compiles 4x faster than 12


def _model_and_params(reduction=None):
  model = ViT(variant="Ti/8", depth=DEPTH, image_size=64, num_classes=10, reduction=reduction)
  params = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
  return model, params  # shapes only: forward_gflops_per_image compiles, nothing runs


def test_dense_gflops_match_the_closed_form():
  model, params = _model_and_params()
  measured = throughput.forward_gflops_per_image(model.apply, params, (4, 64, 64, 3))
  expected = vit_forward_flops(image_size=64, patch=8, width=192, depth=DEPTH, mlp_dim=768, num_classes=10) / 1e9
  assert abs(measured - expected) / expected < 0.10, (measured, expected)


def test_tome_gflops_lower_and_match_the_closed_form():
  model, params = _model_and_params()
  dense = throughput.forward_gflops_per_image(model.apply, params, (4, 64, 64, 3))
  tome = ToMe(r=12)
  reduced = throughput.forward_gflops_per_image(model.clone(reduction=tome).apply, params, (4, 64, 64, 3))
  assert reduced < 0.8 * dense
  counts = token_counts(65, 1, tome.layer_r(DEPTH))
  expected = vit_forward_flops(image_size=64, patch=8, width=192, depth=DEPTH, mlp_dim=768, num_classes=10,
                               tokens_per_layer=counts) / 1e9
  assert abs(reduced - expected) / expected < 0.10, (reduced, expected)


def test_measure_returns_positive_numbers():
  model = ViT(variant="Ti/16", depth=2, image_size=32, num_classes=10, reduction=ToMe(r=1))
  params = random_variables(model, (32, 32, 3))  # no init compiled
  result = throughput.measure(model.apply, params, (2, 32, 32, 3), jnp.float32, warmup=1, repeats=3)
  assert set(result) == {"images_per_s", "median_ms", "gflops_per_image"}
  assert all(value > 0 for value in result.values())
  with pytest.raises(ValueError, match="repeats"):
    throughput.measure(model.apply, params, (2, 32, 32, 3), jnp.float32, repeats=0)


def test_random_batches_differ_and_are_not_zero():
  batches = throughput.random_batches((2, 4, 4, 3), jnp.bfloat16)
  assert len(batches) == 3 and all(b.dtype == jnp.bfloat16 for b in batches)
  assert all(float(jnp.abs(b).sum()) > 0 for b in batches)
  assert not bool(jnp.array_equal(batches[0], batches[1]))


def test_cli_writes_table_and_json(tmp_path, capsys, monkeypatch):
  # The CLI builds ViT(variant=...) with the variant's 12 blocks; 2 blocks take the same code path (parse,
  # init, calibrate, time, count, write) and compile ~4x less (init alone: 7 s at 12 blocks on the CPU).
  monkeypatch.setattr("tokax.models.ViT", functools.partial(ViT, depth=2))
  out = tmp_path / "bench.json"
  rows = throughput.main(["--variant", "Ti/16", "--image-size", "32", "--num-classes", "10", "--batch", "2",
                          "--dtype", "float32", "--attention", "xla", "--reduction", "none",
                          "--reduction", "tome:1", "--reduction", "dtome:1", "--warmup", "1", "--repeats", "2",
                          "--out", str(out)])
  assert [row["reduction"] for row in rows] == ["none", "tome:1", "dtome:1"]  # dtome: calibrated on random batches
  assert rows[1]["gflops_per_image"] < rows[0]["gflops_per_image"]
  assert json.loads(out.read_text()) == rows
  table = (tmp_path / "bench.md").read_text()
  assert "| tokax (xla) | tome:1 |" in table and "| tokax (xla) | tome:1 |" in capsys.readouterr().out


@pytest.mark.parametrize("spec,match", [("tome:x", "ToMe.r"), ("tomee:16", "unknown method 'tomee'"),
                                        ("divprune:0.5", "post-encoder"), ("evit:1.5", "EViT.keep_rate")])
def test_cli_rejects_bad_reduction(spec, match):
  with pytest.raises(ValueError, match=match):
    throughput.parse_args(["--reduction", spec])


def test_cli_takes_any_block_method_of_the_registry():
  args = throughput.parse_args(["--reduction", "evit:0.7", "--reduction", "dtome:2", "--reduction", "mctf:4"])
  assert args.reduction == ["evit:0.7", "dtome:2", "mctf:4"]


def test_timm_model_name():
  assert throughput.timm_model_name("B/16", 224) == "vit_base_patch16_224"
  assert throughput.timm_model_name("S/8", 224) == "vit_small_patch8_224"


@pytest.mark.slow
def test_cli_times_timm_on_cpu(tmp_path):
  pytest.importorskip("torch")
  rows = throughput.main(["--variant", "Ti/16", "--image-size", "32", "--num-classes", "10", "--batch", "2",
                          "--dtype", "float32", "--attention", "xla", "--warmup", "1", "--repeats", "2",
                          "--timm", "--timm-model", "vit_tiny_patch16_224", "--no-torch-compile"])
  assert [row["impl"] for row in rows] == ["tokax (xla)", "timm (eager)"]
  assert rows[1]["images_per_s"] > 0


def test_profile_aggregate_sums_per_name_per_call():
  from tokax.bench import profile
  events = [("gemm", 3e6), ("softmax", 1e6), ("gemm", 5e6), ("copy", 0.5e6), ("gemm", 4e6), ("softmax", 1.5e6)]
  rows = profile.aggregate(events, steps=2, top=2)
  assert [r["name"] for r in rows] == ["gemm", "softmax", "total"]
  assert rows[0]["ms_per_call"] == 6.0 and rows[0]["count"] == 1.5
  assert abs(rows[0]["share"] - 12 / 15) < 1e-12
  assert rows[1]["ms_per_call"] == 1.25
  assert rows[-1]["ms_per_call"] == 7.5 and rows[-1]["count"] == 3.0


def test_sweep_with_matching_sets_the_matching_implementation_only_where_there_is_one():
  from tokax.bench import sweep
  from tokax.reduction import EViT, ToMe
  assert sweep.with_matching(ToMe(r=4), "pallas").matching == "pallas"
  assert sweep.with_matching(ToMe(r=4), "pallas").r == 4
  evit = EViT(keep_rate=0.7, layers=(1,))
  assert sweep.with_matching(evit, "pallas") == evit

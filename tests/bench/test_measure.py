"""tokax.bench.measure: the GFLOPs count against the closed form, the timer against given timings."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokax.bench import measure
from tokax.models import ViT
from tokax.reduction import ToMe

IMAGE, PATCH, WIDTH, DEPTH, MLP, CLASSES = 32, 4, 64, 2, 256, 10


def closed_form_flops(tokens_per_layer=None):
  """2 x multiply-adds of one image: patch embed, per block qkv, attention (logits and weighted sum), proj and MLP
  (block l's attention on the tokens before its merge, its MLP on those after), then the head."""
  patches = (IMAGE // PATCH) ** 2
  n = patches + 1
  macs = patches * PATCH * PATCH * 3 * WIDTH
  for layer in range(DEPTH):
    after = n if tokens_per_layer is None else tokens_per_layer[layer]
    macs += 3 * n * WIDTH**2 + 2 * n**2 * WIDTH + n * WIDTH**2 + 2 * after * WIDTH * MLP
    n = after
  return 2 * (macs + WIDTH * CLASSES)


def _model_and_shapes(reduction=None):
  """The tiny ViT with tanh GELU: XLA counts exact GELU's erf polynomial as 66 FLOPs per element, 15% of this
  forward at width 64 (the tanh form costs 8); the rest beyond the matmuls (norms, softmax) stays within 5%."""
  model = ViT(gelu_approximate=True, variant=f"Ti/{PATCH}", width=WIDTH, depth=DEPTH, num_heads=2, mlp_dim=MLP, image_size=IMAGE,
              num_classes=CLASSES, reduction=reduction)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, IMAGE, IMAGE, 3), jnp.float32))
  return model, shapes


def test_vit_gflops_equal_the_closed_form():
  model, shapes = _model_and_shapes()
  measured = measure.vit_forward_gflops(model, shapes, (2, IMAGE, IMAGE, 3))
  expected = closed_form_flops() / 1e9
  assert abs(measured - expected) / expected < 0.05, (measured, expected)


def test_tome_gflops_equal_the_closed_form_of_its_token_counts():
  tome = ToMe(r=8)
  model, shapes = _model_and_shapes(tome)
  measured = measure.vit_forward_gflops(model, shapes, (2, IMAGE, IMAGE, 3))
  counts = tome.token_counts((IMAGE // PATCH) ** 2 + 1, DEPTH, 1)
  expected = closed_form_flops(counts) / 1e9
  assert counts[-1] < (IMAGE // PATCH) ** 2 + 1
  # The closed form leaves out the plans themselves (the matching's similarities, the merge): they only add.
  assert expected < measured < 1.08 * expected, (measured, expected)
  dense, _ = _model_and_shapes()
  assert measured < measure.vit_forward_gflops(dense, shapes, (2, IMAGE, IMAGE, 3))


def _fake_clock(times):
  it = iter(times)
  return lambda: next(it)


def test_timer_returns_the_median_of_the_clock_readings():
  calls = []
  fn = lambda x: calls.append(x) or jnp.zeros(())
  readings = [0.0, 1.0, 10.0, 13.0, 20.0, 22.0]  # call times 1, 3, 2 -> median 2
  assert measure.call_seconds(fn, ["a", "b"], warmup=2, repeats=3, clock=_fake_clock(readings)) == [1.0, 3.0, 2.0]
  assert calls == ["a", "b", "a", "b", "a"]  # warm-up, then timed calls rotating the inputs
  assert measure.median_seconds(fn, "x", warmup=0, repeats=3, clock=_fake_clock(readings)) == 2.0
  result = measure.measure(lambda p, x: x * p, jnp.float32(2.0), (4, 2, 2, 3), warmup=1, repeats=3,
                           clock=_fake_clock(readings))
  assert result["median_ms"] == 2000.0 and result["images_per_s"] == 2.0
  with pytest.raises(ValueError, match="repeats"):
    measure.call_seconds(fn, ["a"], repeats=0)


def test_random_batches_rotate_distinct_nonzero_inputs():
  batches = measure.random_batches((2, 4, 4, 3), jnp.bfloat16)
  assert len(batches) == 3 and all(b.dtype == jnp.bfloat16 for b in batches)
  assert all(float(jnp.abs(b.astype(jnp.float32)).sum()) > 0 for b in itertools.islice(batches, 3))
  assert not bool(jnp.array_equal(batches[0], batches[1]))


def test_a_row_timed_on_its_data_takes_the_median_of_its_accuracy_calls_after_the_first():
  from random_variables import random_like

  model, shapes = _model_and_shapes()
  variables = random_like(shapes)
  rng = np.random.default_rng(0)
  batches = [{"image": rng.random((4, IMAGE, IMAGE, 3), np.float32), "label": rng.integers(0, CLASSES, 4),
              "mask": np.ones(4, bool)} for _ in range(4)]
  readings = [0.0, 10.0, 10.0, 11.0, 11.0, 13.0, 13.0, 16.0]  # calls of 10 s (the first), 1, 2, 3 s -> median 2
  executable = measure.compile_rows(model, variables, [ToMe(r=2)], (4, IMAGE, IMAGE, 3))[0]
  row = measure.reduction_row(model, variables, ToMe(r=2), lambda: batches, time_on_data=True,
                              executable=executable, clock=_fake_clock(readings))
  assert row["timing"] == "data" and row["median_ms"] == 2000.0 and row["images_per_s"] == 2.0
  want = measure.reduction_row(model, variables, ToMe(r=2), lambda: batches, timed=False)
  np.testing.assert_array_equal(row["predictions"], want["predictions"])  # the AOT executable = the jitted row
  assert row["gflops_per_image"] == pytest.approx(want["gflops_per_image"], rel=1e-3)  # its own CPU lowering


def test_the_dense_row_read_off_the_encoder_pass_equals_its_own_row():
  """One pass of the dense model gives the dense row (outputs, GFLOPs, tokens) and the encoder outputs; timed on
  its own calls after the first."""
  from random_variables import random_like

  model, shapes = _model_and_shapes()
  variables = random_like(shapes)
  rng = np.random.default_rng(1)
  batches = [{"image": rng.random((4, IMAGE, IMAGE, 3), np.float32), "label": rng.integers(0, CLASSES, 4),
              "mask": np.ones(4, bool)} for _ in range(4)]
  executable = measure.compile_programs([measure.encoder_row_forward(model, keep_assign=2)], variables,
                                        (4, IMAGE, IMAGE, 3))[0]
  readings = [0.0, 10.0, 10.0, 11.0, 11.0, 13.0, 13.0, 16.0]  # calls of 10 s (the first), 1, 2, 3 s -> median 2
  encoder = measure.encoder_pass(model, variables, lambda: batches, bench_batch_size=4, keep_assign=2,
                                 executable=executable, time_on_data=True, clock=_fake_clock(readings))
  assert encoder.seconds == 2.0 and len(encoder.batches) == 4 and "cls" in encoder.batches[0][1]
  row = measure.reduction_row(model, variables, None, lambda: batches, bench_batch_size=4, encoder=encoder,
                              keep_assign=2)
  want = measure.reduction_row(model, variables, None, lambda: batches, keep_assign=2, timed=False,
                               executable=measure.compile_rows(model, variables, [None], (4, IMAGE, IMAGE, 3),
                                                               keep_assign=2)[0])
  np.testing.assert_array_equal(row["predictions"], want["predictions"])
  np.testing.assert_array_equal(row["assign"], want["assign"])
  assert row["timing"] == "encoder" and row["images_per_s"] == 2.0
  assert {k: row[k] for k in ("gflops_per_image", "tokens", "layer_tokens", "top5")} == {
      k: want[k] for k in ("gflops_per_image", "tokens", "layer_tokens", "top5")}
  with pytest.raises(ValueError, match="kept 2 assignments"):
    measure.reduction_row(model, variables, None, lambda: batches, encoder=encoder)


def test_row_token_counts_are_the_methods_static_counts():
  from tokax.reduction import DivPrune, EViT

  model, shapes = _model_and_shapes()
  image = (IMAGE, IMAGE, 3)
  n = (IMAGE // PATCH) ** 2 + 1
  for reduction in (None, ToMe(r=8), EViT(keep_rate=0.5)):
    traced = measure.block_counts(model.clone(reduction=reduction), shapes, image)
    assert measure.row_tokens(model, shapes, reduction, image) == (traced, traced[-1])
  assert measure.row_tokens(model, shapes, DivPrune(ratio=0.5), image) == ((n,) * DEPTH, 1 + (n - 1) // 2)


def test_row_compiler_options_take_the_legacy_cpu_emitters_only_for_bipartite_mergers():
  from tokax.reduction import MCTF, EViT, PiToMe

  assert measure.row_compiler_options(ToMe(r=2)) == measure.row_compiler_options(MCTF(r=2)) \
      == measure.row_compiler_options(PiToMe()) == measure.LEGACY_CPU_EMITTERS
  assert measure.row_compiler_options(None) == measure.row_compiler_options(EViT()) == {}

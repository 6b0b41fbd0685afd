"""Evaluation metrics against scikit-image, the text mask, code statistics and tiling."""
import numpy as np
import pytest
import skimage.metrics

from tokax.tokenizers import evaluate

RNG = np.random.default_rng(3)


def test_psnr_and_ssim_match_skimage():
  a = RNG.uniform(0, 1, (2, 16, 12, 3)).astype(np.float32)
  b = np.clip(a + RNG.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
  ours_psnr, ours_ssim = np.asarray(evaluate.psnr(a, b)), np.asarray(evaluate.ssim(a, b))
  for i in range(2):
    assert ours_psnr[i] == pytest.approx(skimage.metrics.peak_signal_noise_ratio(a[i], b[i], data_range=1.0), rel=1e-5)
    ref = skimage.metrics.structural_similarity(a[i], b[i], channel_axis=-1, data_range=1.0)
    assert ours_ssim[i] == pytest.approx(ref, abs=2e-5)
  mask = np.zeros((2, 16, 12), bool)
  mask[:, 4:10, 3:9] = True
  err = np.square(a.astype(np.float64) - b).mean(-1)[mask].mean()
  assert evaluate.masked_psnr(a, b, mask) == pytest.approx(-10 * np.log10(err), rel=1e-6)
  _, full = skimage.metrics.structural_similarity(a[0], b[0], channel_axis=-1, data_range=1.0, full=True)
  expected = full.mean(-1)[mask[0]].mean()  # the region lies inside the window-valid area
  assert evaluate.masked_ssim(a[:1], b[:1], mask[:1]) == pytest.approx(expected, abs=2e-5)


def test_text_mask_covers_the_glyphs():
  grey = np.full((20, 30), 0.9)
  grey[8:11, 5:25] = 0.1  # one dark stroke
  mask = evaluate.text_mask(grey, dilation=1)
  assert mask[8:11, 5:25].all() and mask[7, 4] and not mask[0, 0] and mask.sum() == 5 * 22


def test_codebook_stats_and_tiles():
  codes = np.array([[0, 0], [1, 3]])
  stats = evaluate.codebook_stats(codes, 8)
  p = np.array([0.5, 0.25, 0.25])
  assert stats["usage"] == 3 / 8 and stats["perplexity"] == pytest.approx(np.exp(-(p * np.log(p)).sum()))
  with pytest.raises(ValueError, match=r"\[0, 8\)"):
    evaluate.codebook_stats(np.array([8]), 8)
  image = RNG.uniform(size=(10, 13, 3))
  t = evaluate.tiles(image, 4)
  assert t.shape == (6, 4, 4, 3)
  np.testing.assert_array_equal(t[4], image[4:8, 4:8])

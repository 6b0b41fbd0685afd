"""Visual tokenizers: quantizers, the conv autoencoder, the discrete tokenizer, the KL autoencoder, their losses.

  quantizers.py   VQ, VQ-EMA, FSQ, LFQ, diagonal Gaussian (one contract: z -> (zq, QuantizerOutput))
  autoencoder.py  Encoder / Decoder (VQGAN / MaskGIT family)
  tokenizer.py    Tokenizer (encoder -> quantizer -> decoder) and the quantizer registry
  vae.py          KLAutoencoder (continuous latents with a stored latent scale)
  losses.py       reconstruction, PatchGAN discriminator, GAN losses, adaptive weight
  evaluate.py     VTBench-style metrics and suites (the CLI: `python -m tokax.train.evaluate_tokenizer`)
"""
from tokax.tokenizers.autoencoder import Decoder, Encoder, ResBlock
from tokax.tokenizers.quantizers import (FSQ, LFQ, QUANTIZER_STATE, DiagonalGaussian, QuantizerOutput, VectorQuantizer,
                                         VectorQuantizerEMA, code_counts, histogram_metrics, latent_scale_factor)
from tokax.tokenizers.tokenizer import QUANTIZERS, Tokenizer, TokenizerOutput, build_quantizer
from tokax.tokenizers.vae import KLAutoencoder

__all__ = [
    "QUANTIZERS", "QUANTIZER_STATE", "Decoder", "DiagonalGaussian", "Encoder", "FSQ", "KLAutoencoder", "LFQ",
    "QuantizerOutput", "ResBlock", "Tokenizer", "TokenizerOutput", "VectorQuantizer", "VectorQuantizerEMA",
    "build_quantizer", "code_counts", "histogram_metrics", "latent_scale_factor",
]

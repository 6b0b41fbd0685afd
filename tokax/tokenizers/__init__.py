"""Visual tokenizers: the conv autoencoder, the discrete tokenizer, the KL autoencoder, their losses.

  autoencoder.py  Encoder / Decoder (VQGAN / MaskGIT family)
  tokenizer.py    Tokenizer (encoder -> quantizer -> decoder) and the quantizer registry
  vae.py          KLAutoencoder (continuous latents with a stored latent scale)
  losses.py       reconstruction, PatchGAN discriminator, GAN losses, adaptive weight
  evaluate.py     `python -m tokax.tokenizers.evaluate --workdir ...` (VTBench-style)
"""
from tokax.tokenizers.autoencoder import Decoder, Encoder, ResBlock
from tokax.tokenizers.tokenizer import QUANTIZERS, Tokenizer, TokenizerOutput, build_quantizer
from tokax.tokenizers.vae import DiagonalGaussian, KLAutoencoder

__all__ = ["QUANTIZERS", "Decoder", "DiagonalGaussian", "Encoder", "KLAutoencoder", "ResBlock", "Tokenizer",
           "TokenizerOutput", "build_quantizer"]

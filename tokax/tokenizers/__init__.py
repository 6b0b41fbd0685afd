"""Visual tokenizers: quantizers (VQ, VQ-EMA, FSQ, LFQ, diagonal Gaussian) for conv autoencoders."""
from tokax.tokenizers.quantizers import (FSQ, LFQ, QUANTIZER_STATE, DiagonalGaussian, QuantizerOutput, VectorQuantizer,
                                         VectorQuantizerEMA, code_counts, histogram_metrics, latent_scale_factor)

__all__ = [
    "DiagonalGaussian",
    "FSQ",
    "LFQ",
    "QUANTIZER_STATE",
    "QuantizerOutput",
    "VectorQuantizer",
    "VectorQuantizerEMA",
    "code_counts",
    "histogram_metrics",
    "latent_scale_factor",
]

"""VQGAN tokenizer (pure torch): images in [-1, 1] <-> token grids, taming-compatible weights.

Public API:
    VQGANConfig, PRESETS, preset          -- tokenizer.config
    VQGAN, VQGANOutput                    -- tokenizer.vqgan
    LlamaGenVQConfig, LlamaGenVQ          -- tokenizer.config, tokenizer.llamagen (the v2 tokenizer family)
    save_vqgan, load_tokenizer (either family; load_vqgan is an alias), weights_digest -- tokenizer.checkpoint

Also (import from their modules): `tokenizer.convert` (reads taming `last.ckpt` + `model.yaml`),
`tokenizer.train` (TokenizerTrainingConfig, train_tokenizer -> TrainingSummary), `tokenizer.quality`
(measure_reconstruction, save_reconstruction_grid), and the training pieces `losses`, `discriminator`,
`perceptual`, `codebook`.
"""

from tokenizer.checkpoint import load_tokenizer, load_vqgan, save_vqgan, weights_digest
from tokenizer.config import LLAMAGEN_PRESETS, PRESETS, LlamaGenVQConfig, VQGANConfig, preset
from tokenizer.llamagen import LlamaGenVQ
from tokenizer.vqgan import VQGAN, VQGANOutput

__all__ = [
    "LLAMAGEN_PRESETS",
    "PRESETS",
    "VQGAN",
    "LlamaGenVQ",
    "LlamaGenVQConfig",
    "VQGANConfig",
    "VQGANOutput",
    "load_tokenizer",
    "load_vqgan",
    "preset",
    "save_vqgan",
    "weights_digest",
]

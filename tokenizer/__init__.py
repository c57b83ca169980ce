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

import importlib
from typing import TYPE_CHECKING, Any

# The names below load their modules (and torch) on first use, not on `import tokenizer`: a module
# that needs only `tokenizer.pixels`' crop (the tokenize job's decode tasks) then costs no torch import.
_EXPORTS = {
    "load_tokenizer": "tokenizer.checkpoint",
    "load_vqgan": "tokenizer.checkpoint",
    "save_vqgan": "tokenizer.checkpoint",
    "weights_digest": "tokenizer.checkpoint",
    "LLAMAGEN_PRESETS": "tokenizer.config",
    "PRESETS": "tokenizer.config",
    "LlamaGenVQConfig": "tokenizer.config",
    "VQGANConfig": "tokenizer.config",
    "preset": "tokenizer.config",
    "LlamaGenVQ": "tokenizer.llamagen",
    "VQGAN": "tokenizer.vqgan",
    "VQGANOutput": "tokenizer.vqgan",
}
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

if TYPE_CHECKING:
    from tokenizer.checkpoint import load_tokenizer, load_vqgan, save_vqgan, weights_digest
    from tokenizer.config import LLAMAGEN_PRESETS, PRESETS, LlamaGenVQConfig, VQGANConfig, preset
    from tokenizer.llamagen import LlamaGenVQ
    from tokenizer.vqgan import VQGAN, VQGANOutput


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tokenizer' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)

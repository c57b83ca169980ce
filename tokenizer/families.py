"""The tokenizer families by name: a config from a stored dict, a model from a config, presets.

Two families share one API (`encode_to_indices`, `decode_from_indices`, the training `forward`):
"vqgan" (taming's VQGAN, the v1 tokenizer, `tokenizer.vqgan`) and "llamagen-vq" (LlamaGen's VQ
with l2-normalised codes, the v2 tokenizer, `tokenizer.llamagen`). A config names its family in
its `family` field; configs stored before the field existed are VQGANs (docs/architecture.md,
"Adding a model family").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tokenizer.config import LLAMAGEN_PRESETS, PRESETS, LlamaGenVQConfig, VQGANConfig
from tokenizer.llamagen import LlamaGenVQ
from tokenizer.vqgan import VQGAN
from weights.families import Family, FamilyRegistry

TokenizerConfig = VQGANConfig | LlamaGenVQConfig
Tokenizer = VQGAN | LlamaGenVQ

REGISTRY: FamilyRegistry[TokenizerConfig, Tokenizer] = FamilyRegistry(
    kind="tokenizer",
    families={"vqgan": Family(VQGANConfig, VQGAN), "llamagen-vq": Family(LlamaGenVQConfig, LlamaGenVQ)},
    default_family="vqgan",  # configs stored before the `family` field existed
    presets={**PRESETS, **LLAMAGEN_PRESETS},
)
FAMILIES = REGISTRY.families
TOKENIZER_PRESETS = REGISTRY.presets

# The package's names for the registry's three calls (see `weights.families.FamilyRegistry`):
# a config from a stored dict ("vqgan" without a family key), a fresh model, a named preset.
tokenizer_config_from_dict: Callable[[Mapping[str, Any]], TokenizerConfig] = REGISTRY.config_from_dict
build_tokenizer: Callable[[TokenizerConfig], Tokenizer] = REGISTRY.build
tokenizer_preset: Callable[[str], TokenizerConfig] = REGISTRY.preset

"""The tokenizer families by name: a config from a stored dict, a model from a config, presets.

Two families share one API (`encode_to_indices`, `decode_from_indices`, the training `forward`):
"vqgan" (taming's VQGAN, the v1 tokenizer, `tokenizer.vqgan`) and "llamagen-vq" (LlamaGen's VQ
with l2-normalised codes, the v2 tokenizer, `tokenizer.llamagen`). A config names its family in
its `family` field; configs stored before the field existed are VQGANs (docs/architecture.md,
"Adding a model family").
"""

from __future__ import annotations

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


def tokenizer_config_from_dict(values: dict[str, Any]) -> TokenizerConfig:
    """The config of the family named by `values["family"]` ("vqgan" when absent).

    Raises:
        ValueError: an unknown family, or fields the family's config does not have (named).
    """
    return REGISTRY.config_from_dict(values)


def build_tokenizer(config: TokenizerConfig) -> Tokenizer:
    """A freshly initialised tokenizer of `config`'s family."""
    return REGISTRY.build(config)


def tokenizer_preset(name: str) -> TokenizerConfig:
    """The named preset of either family.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    return REGISTRY.preset(name)

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

TokenizerConfig = VQGANConfig | LlamaGenVQConfig
Tokenizer = VQGAN | LlamaGenVQ

FAMILIES: dict[str, tuple[type[VQGANConfig] | type[LlamaGenVQConfig], type[VQGAN] | type[LlamaGenVQ]]] = {
    "vqgan": (VQGANConfig, VQGAN),
    "llamagen-vq": (LlamaGenVQConfig, LlamaGenVQ),
}
TOKENIZER_PRESETS: dict[str, TokenizerConfig] = {**PRESETS, **LLAMAGEN_PRESETS}


def tokenizer_config_from_dict(values: dict[str, Any]) -> TokenizerConfig:
    """The config of the family named by `values["family"]` ("vqgan" when absent).

    Raises:
        ValueError: an unknown family, or fields the family's config does not have (named).
    """
    family = values.get("family", "vqgan")
    if family not in FAMILIES:
        raise ValueError(f"unknown tokenizer family {family!r}; known families: {sorted(FAMILIES)}")
    return FAMILIES[family][0].from_dict(values)


def build_tokenizer(config: TokenizerConfig) -> Tokenizer:
    """A freshly initialised tokenizer of `config`'s family."""
    if isinstance(config, VQGANConfig):
        return VQGAN(config)
    if isinstance(config, LlamaGenVQConfig):
        return LlamaGenVQ(config)
    raise TypeError(f"expected a VQGANConfig or LlamaGenVQConfig, got {type(config).__name__}")


def tokenizer_preset(name: str) -> TokenizerConfig:
    """The named preset of either family.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    try:
        return TOKENIZER_PRESETS[name]
    except KeyError:
        known = sorted(TOKENIZER_PRESETS)
        raise ValueError(f"unknown tokenizer preset {name!r}; known presets: {known}") from None

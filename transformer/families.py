"""The transformer families by name: a config from a stored dict, a model from a config, presets.

Two families share one call signature (`transformer.model.MaskPredictor`), so `sample()`, the
training objective and the editors take either: "maskgit" (valeoai v1, `MaskTransformer`) and
"halton" (valeoai v2, `HaltonTransformer`). A config names its family in its `family` field;
configs stored before the field existed are "maskgit" (docs/architecture.md, "Adding a model family").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from transformer.config import (
    HALTON_PRESETS,
    PRESETS,
    HaltonConfig,
    SamplingConfig,
    TransformerConfig,
    halton_sampling_config,
    reference_sampling_config,
)
from transformer.halton import HaltonTransformer
from transformer.model import MaskPredictor, MaskTransformer
from weights.families import Family, FamilyRegistry

ModelConfig = TransformerConfig | HaltonConfig

REGISTRY: FamilyRegistry[ModelConfig, MaskPredictor] = FamilyRegistry(
    kind="transformer",
    families={
        "maskgit": Family(TransformerConfig, MaskTransformer),
        "halton": Family(HaltonConfig, HaltonTransformer),
    },
    default_family="maskgit",  # configs stored before the `family` field existed
    presets={**PRESETS, **HALTON_PRESETS},
)
FAMILIES = REGISTRY.families
TRANSFORMER_PRESETS = REGISTRY.presets

# The package's names for the registry's three calls (see `weights.families.FamilyRegistry`):
# a config from a stored dict ("maskgit" without a family key), a fresh model, a named preset.
transformer_config_from_dict: Callable[[Mapping[str, Any]], ModelConfig] = REGISTRY.config_from_dict
build_transformer: Callable[[ModelConfig], MaskPredictor] = REGISTRY.build
transformer_preset: Callable[[str], ModelConfig] = REGISTRY.preset


def reference_sampling(config: ModelConfig) -> SamplingConfig:
    """The reference's sampling settings for a model of this family and size."""
    if isinstance(config, HaltonConfig):
        return halton_sampling_config(config)
    return reference_sampling_config(config.grid_size)

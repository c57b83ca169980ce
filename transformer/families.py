"""The transformer families by name: a config from a stored dict, a model from a config, presets.

Two families share one call signature (`transformer.model.MaskPredictor`), so `sample()`, the
training objective and the editors take either: "maskgit" (valeoai v1, `MaskTransformer`) and
"halton" (valeoai v2, `HaltonTransformer`). A config names its family in its `family` field;
configs stored before the field existed are "maskgit" (docs/architecture.md, "Adding a model family").
"""

from __future__ import annotations

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


def transformer_config_from_dict(values: dict[str, Any]) -> ModelConfig:
    """The config of the family named by `values["family"]` ("maskgit" when absent).

    Raises:
        ValueError: an unknown family, or keys the family's config does not have (named).
    """
    return REGISTRY.config_from_dict(values)


def build_transformer(config: ModelConfig) -> MaskPredictor:
    """A freshly initialised transformer of `config`'s family."""
    return REGISTRY.build(config)


def transformer_preset(name: str) -> ModelConfig:
    """The named preset of either family.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    return REGISTRY.preset(name)


def reference_sampling(config: ModelConfig) -> SamplingConfig:
    """The reference's sampling settings for a model of this family and size."""
    if isinstance(config, HaltonConfig):
        return halton_sampling_config(config)
    return reference_sampling_config(config.grid_size)

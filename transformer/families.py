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

ModelConfig = TransformerConfig | HaltonConfig

FAMILIES: dict[str, tuple[type[TransformerConfig] | type[HaltonConfig], type[MaskPredictor]]] = {
    "maskgit": (TransformerConfig, MaskTransformer),
    "halton": (HaltonConfig, HaltonTransformer),
}
TRANSFORMER_PRESETS: dict[str, ModelConfig] = {**PRESETS, **HALTON_PRESETS}


def transformer_config_from_dict(values: dict[str, Any]) -> ModelConfig:
    """The config of the family named by `values["family"]` ("maskgit" when absent).

    Raises:
        ValueError: an unknown family, or keys the family's config does not have (named).
    """
    family = values.get("family", "maskgit")
    if family not in FAMILIES:
        raise ValueError(f"unknown transformer family {family!r}; known families: {sorted(FAMILIES)}")
    return FAMILIES[family][0].from_dict(values)


def build_transformer(config: ModelConfig) -> MaskPredictor:
    """A freshly initialised transformer of `config`'s family."""
    if isinstance(config, TransformerConfig):
        return MaskTransformer(config)
    if isinstance(config, HaltonConfig):
        return HaltonTransformer(config)
    raise TypeError(f"expected a TransformerConfig or HaltonConfig, got {type(config).__name__}")


def transformer_preset(name: str) -> ModelConfig:
    """The named preset of either family.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    try:
        return TRANSFORMER_PRESETS[name]
    except KeyError:
        known = sorted(TRANSFORMER_PRESETS)
        raise ValueError(f"unknown transformer preset {name!r}; known presets: {known}") from None


def reference_sampling(config: ModelConfig) -> SamplingConfig:
    """The reference's sampling settings for a model of this family and size."""
    if isinstance(config, HaltonConfig):
        return halton_sampling_config(config)
    return reference_sampling_config(config.grid_size)

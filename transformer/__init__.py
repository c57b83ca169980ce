"""MaskGIT transformer: model, masking schedule, training objective, sampler and token editing.

Pure torch; imports nothing else of ours. Public API:

* `TransformerConfig`, `HaltonConfig`, `SamplingConfig`, `PRESETS`, `HALTON_PRESETS`, `SAMPLING_PRESETS`,
  `MAX_SEED` (config.py)
* `MaskTransformer` (model.py, v1), `HaltonTransformer` (halton.py, v2), both `MaskPredictor`s
* `build_transformer`, `transformer_config_from_dict`, `transformer_preset` (families.py)
* `halton_order` (halton_order.py)
* `mask_ratio`, `tokens_per_step`, `SCHEDULES` (masking.py)
* `mask_tokens`, `masked_token_loss`, `ObjectiveOutput` (objective.py)
* `sample`, `SampleResult` (sample.py)
* `inpaint`, `outpaint`, `latent_box` (editing.py)
* `save_transformer`, `load_transformer`, `load_sampling_config`, `load_class_names` (checkpoint.py;
  reference `.pth` files are read by convert.py)
"""

from transformer.checkpoint import (
    load_class_names,
    load_sampling_config,
    load_transformer,
    read_transformer_config,
    save_transformer,
)
from transformer.config import (
    HALTON_PRESETS,
    MAX_SEED,
    PRESETS,
    SAMPLING_PRESETS,
    HaltonConfig,
    SamplingConfig,
    TransformerConfig,
)
from transformer.editing import EditResult, TokenBox, inpaint, latent_box, outpaint
from transformer.families import build_transformer, transformer_config_from_dict, transformer_preset
from transformer.halton import HaltonTransformer
from transformer.halton_order import halton_order
from transformer.masking import SCHEDULES, mask_ratio, tokens_per_step
from transformer.model import MaskPredictor, MaskTransformer, unwrap_model
from transformer.objective import MaskedTokens, ObjectiveOutput, mask_tokens, masked_token_loss
from transformer.sample import SampleResult, SampleTrace, sample

__all__ = [
    "HALTON_PRESETS",
    "MAX_SEED",
    "PRESETS",
    "SAMPLING_PRESETS",
    "SCHEDULES",
    "EditResult",
    "HaltonConfig",
    "HaltonTransformer",
    "MaskPredictor",
    "MaskTransformer",
    "MaskedTokens",
    "ObjectiveOutput",
    "SampleResult",
    "SampleTrace",
    "SamplingConfig",
    "TokenBox",
    "TransformerConfig",
    "build_transformer",
    "halton_order",
    "inpaint",
    "latent_box",
    "load_class_names",
    "load_sampling_config",
    "load_transformer",
    "mask_ratio",
    "mask_tokens",
    "masked_token_loss",
    "outpaint",
    "read_transformer_config",
    "sample",
    "save_transformer",
    "tokens_per_step",
    "transformer_config_from_dict",
    "transformer_preset",
    "unwrap_model",
]

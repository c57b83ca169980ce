"""MaskGIT transformer: model, masking schedule, training objective, sampler and token editing.

Pure torch; imports nothing else of ours. Public API:

* `TransformerConfig`, `SamplingConfig`, `PRESETS`, `SAMPLING_PRESETS` (config.py)
* `MaskTransformer` (model.py)
* `mask_ratio`, `tokens_per_step`, `SCHEDULES` (masking.py)
* `mask_tokens`, `masked_token_loss`, `ObjectiveOutput` (objective.py)
* `sample`, `SampleResult` (sample.py)
* `inpaint`, `outpaint`, `class_guided_edit`, `latent_box` (editing.py)
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
from transformer.config import PRESETS, SAMPLING_PRESETS, SamplingConfig, TransformerConfig
from transformer.editing import EditResult, TokenBox, class_guided_edit, inpaint, latent_box, outpaint
from transformer.masking import SCHEDULES, mask_ratio, tokens_per_step
from transformer.model import MaskTransformer, unwrap_model
from transformer.objective import MaskedTokens, ObjectiveOutput, mask_tokens, masked_token_loss
from transformer.sample import SampleResult, SampleTrace, sample

__all__ = [
    "PRESETS",
    "SAMPLING_PRESETS",
    "SCHEDULES",
    "EditResult",
    "MaskTransformer",
    "MaskedTokens",
    "ObjectiveOutput",
    "SampleResult",
    "SampleTrace",
    "SamplingConfig",
    "TokenBox",
    "TransformerConfig",
    "class_guided_edit",
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
    "unwrap_model",
]

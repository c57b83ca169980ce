"""Generation: the one object that turns a transformer + tokenizer into images.

Pure torch (no Ray, no DeepSpeed). Public API:

* `MaskGIT` (maskgit.py): `MaskGIT.load(transformer, tokenizer, *, device, bf16, storage_options)`,
  `generate`, `inpaint`, `outpaint`, and the model calls `sample_tokens`, `encode`, `decode`.
* `Generation`, `Edit`: what they return.
* `resolve_sampling`, `sampling_knobs` (settings.py): defaults ← stored config ← request.
* `box_to_token_region`, `mask_to_token_region`, `blend_into`, `PixelBox` (regions.py).

See docs/architecture.md for where this sits between the models and the jobs.
"""

from generation.maskgit import Edit, Generation, MaskGIT, check_compatible, draw_seeds, resolve_device
from generation.regions import PixelBox, blend_into, box_to_token_region, mask_to_token_region
from generation.settings import resolve_sampling, sampling_knobs

__all__ = [
    "Edit",
    "Generation",
    "MaskGIT",
    "PixelBox",
    "blend_into",
    "box_to_token_region",
    "check_compatible",
    "draw_seeds",
    "mask_to_token_region",
    "resolve_device",
    "resolve_sampling",
    "sampling_knobs",
]

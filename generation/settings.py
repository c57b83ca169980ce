"""Sampling settings of a generation call: one merge of defaults ← stored config ← request.

Every consumer (the `maskgit sample` CLI, the Serve app, the evaluate job, training sample grids, the
ablation) resolves its knobs here, so "a knob not given means the value stored with the weights" holds
everywhere in the same way. See docs/reference.md#sampler for what each knob means.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from transformer.config import SamplingConfig

SamplingOverrides = SamplingConfig | Mapping[str, Any] | None


def sampling_knobs() -> tuple[str, ...]:
    """The names of every sampling knob (the fields of `SamplingConfig`)."""
    return tuple(field.name for field in dataclasses.fields(SamplingConfig))


def resolve_sampling(stored: SamplingConfig | None, request: SamplingOverrides = None) -> SamplingConfig:
    """The settings a call runs with: `SamplingConfig()` defaults, then `stored`, then `request`.

    Args:
        stored: the settings saved with the transformer (None: the reference defaults).
        request: a full `SamplingConfig` (used as is), or a mapping of overrides where None means
            "not given" (so a CLI namespace or a request body can be passed field by field).

    Returns:
        A validated SamplingConfig.

    Raises:
        ValueError: an unknown knob name, or a value `SamplingConfig` rejects (steps < 1, ...).
    """
    if isinstance(request, SamplingConfig):
        return request
    values = (stored or SamplingConfig()).to_dict()
    overrides = {key: value for key, value in (request or {}).items() if value is not None}
    unknown = sorted(set(overrides) - set(values))
    if unknown:
        raise ValueError(f"unknown sampling setting(s) {unknown}; known: {sorted(values)}")
    return SamplingConfig(**{**values, **overrides})

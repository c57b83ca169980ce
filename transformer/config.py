"""Configurations of the MaskGIT transformer and of its sampler, with named presets.

`TransformerConfig` defaults are the valeoai v1 "base" model that produced the released ImageNet
checkpoints (maskgit_spec.md §B1): 24 pre-LN blocks of width 768, 16 heads, MLP 3072, dropout 0.1,
1024 VQ codes on a 16×16 grid, 1000 classes. The vocabulary layout is derived here and nowhere else:

    ids 0 … K−1                 VQ codes                       (K = codebook_size)
    id  K                       [MASK]                         (`mask_token_id`)
    ids K+1 … K+C               class c is K + 1 + c           (`first_class_id`, C = num_classes)
    id  K+1+C                   the null class used for CFG    (`null_class_id`)

`SamplingConfig` holds the decoding knobs; its defaults are the reference's ImageNet-256 settings
(§D1). It travels with the weights in our folder format (`config.json`, see `checkpoint.py`), so
the CLI and the server use the sampling defaults the model was exported with.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from transformer.masking import check_schedule


@dataclass(frozen=True)
class TransformerConfig:
    """Hyper-parameters of `MaskTransformer`; defaults are the reference base model.

    Attributes:
        codebook_size: K, number of VQ codes (taken from the tokenizer).
        grid_size: side of the square token grid (16 for 256 px, 32 for 512 px with f = 16).
        num_classes: C, number of class labels.
        hidden_size: D, model width.
        depth: number of transformer blocks.
        num_heads: attention heads (D must be divisible by it).
        mlp_size: hidden width of each feed-forward block.
        dropout: dropout in the embedding MLPs, on attention probabilities and in the MLPs.
    """

    codebook_size: int = 1024
    grid_size: int = 16
    num_classes: int = 1000
    hidden_size: int = 768
    depth: int = 24
    num_heads: int = 16
    mlp_size: int = 3072
    dropout: float = 0.1

    def __post_init__(self) -> None:
        for name in ("codebook_size", "grid_size", "num_classes", "hidden_size", "depth", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"TransformerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.mlp_size < 1:
            raise ValueError(f"TransformerConfig.mlp_size must be >= 1, got {self.mlp_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"TransformerConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_heads ({self.num_heads})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"TransformerConfig.dropout must be in [0, 1), got {self.dropout}")

    @property
    def mask_token_id(self) -> int:
        """Id of [MASK] in token grids (= codebook_size, as in the reference)."""
        return self.codebook_size

    @property
    def first_class_id(self) -> int:
        """Vocabulary id of class 0; class c is `first_class_id + c`."""
        return self.codebook_size + 1

    @property
    def null_class_id(self) -> int:
        """Vocabulary id of the unconditional ("null") class token used for classifier-free guidance."""
        return self.codebook_size + 1 + self.num_classes

    @property
    def vocab_size(self) -> int:
        """Rows of the token embedding: codes + [MASK] + classes + null class."""
        return self.codebook_size + self.num_classes + 2

    @property
    def num_tokens(self) -> int:
        """N = grid_size², image tokens per sample."""
        return self.grid_size * self.grid_size

    @property
    def sequence_length(self) -> int:
        """N + 1: image tokens followed by the class token."""
        return self.num_tokens + 1

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TransformerConfig:
        """Build from a dict (e.g. config.json), naming unknown keys instead of ignoring them."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TransformerConfig keys: {unknown} (known: {sorted(known)})")
        return cls(**values)


PRESETS: dict[str, TransformerConfig] = {
    # The released valeoai v1 checkpoints (174.16 M and 176.31 M parameters).
    "maskgit-imagenet256": TransformerConfig(),
    "maskgit-imagenet512": TransformerConfig(grid_size=32),
    # CPU-sized models for small data (e.g. 32×32 Fashion-MNIST through an f = 4 tokenizer: 8×8 grid).
    # codebook_size is overridden from the tokenizer at training time.
    "small": TransformerConfig(
        codebook_size=1024, grid_size=8, num_classes=10, hidden_size=256, depth=8, num_heads=8, mlp_size=1024
    ),
    "tiny": TransformerConfig(
        codebook_size=256, grid_size=8, num_classes=10, hidden_size=128, depth=4, num_heads=4, mlp_size=512
    ),
}

CFG_SCHEDULES = ("linear", "constant")


@dataclass(frozen=True)
class SamplingConfig:
    """Decoding knobs of `sample()`; defaults are the reference's ImageNet-256 settings.

    Attributes:
        steps: number of decoding steps T (= forward passes, CFG halves batched into one).
        schedule: masking schedule name (see `transformer.masking.SCHEDULES`).
        temperature: logits are divided by it before the softmax. The reference's `sm_temp` s
            multiplies logits, so reference `sm_temp=s` is `temperature=1/s` here.
        gumbel_temperature: scale of the Gumbel noise added to log-confidences at the first step;
            it decays linearly to 0 at the last step (reference `r_temp`).
        cfg_weight: classifier-free guidance weight w (0 = conditional only).
        cfg_schedule: "linear" ramps the weight from 0 at the first step to w at the last (reference);
            "constant" uses w at every step.
    """

    steps: int = 8
    schedule: str = "arccos"
    temperature: float = 1.0
    gumbel_temperature: float = 4.5
    cfg_weight: float = 3.0
    cfg_schedule: str = "linear"

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")
        check_schedule(self.schedule)
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.gumbel_temperature < 0:
            raise ValueError(f"gumbel_temperature must be >= 0, got {self.gumbel_temperature}")
        if self.cfg_weight < 0:
            raise ValueError(f"cfg_weight must be >= 0, got {self.cfg_weight}")
        if self.cfg_schedule not in CFG_SCHEDULES:
            raise ValueError(f"cfg_schedule must be one of {CFG_SCHEDULES}, got {self.cfg_schedule!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def as_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `transformer.sample(model, class_ids, **config.as_kwargs())`."""
        return self.to_dict()

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SamplingConfig:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown SamplingConfig keys: {unknown} (known: {sorted(known)})")
        return cls(**values)


SAMPLING_PRESETS: dict[str, SamplingConfig] = {
    # README / main.py defaults of valeoai v1 (FID 6.80 at 256, 7.26 at 512).
    "maskgit-imagenet256": SamplingConfig(),
    "maskgit-imagenet512": SamplingConfig(steps=15, gumbel_temperature=7.0, cfg_weight=2.8),
}


def reference_sampling_config(grid_size: int) -> SamplingConfig:
    """The reference's published sampling settings for a 16×16 (256 px) or 32×32 (512 px) grid."""
    if grid_size == 32:
        return SAMPLING_PRESETS["maskgit-imagenet512"]
    return SAMPLING_PRESETS["maskgit-imagenet256"]

"""Configurations of the MaskGIT transformer and of its sampler, with named presets.

`TransformerConfig` defaults are the valeoai v1 "base" model that produced the released ImageNet
checkpoints (docs/reference.md#transformer): 24 pre-LN blocks of width 768, 16 heads, MLP 3072, dropout 0.1,
1024 VQ codes on a 16×16 grid, 1000 classes. The vocabulary layout is derived here and nowhere else:

    ids 0 … K−1                 VQ codes                       (K = codebook_size)
    id  K                       [MASK]                         (`mask_token_id`)
    ids K+1 … K+C               class c is K + 1 + c           (`first_class_id`, C = num_classes)
    id  K+1+C                   the null class used for CFG    (`null_class_id`)

`HaltonConfig` (with `HALTON_PRESETS`) describes the v2 family, `transformer.halton.HaltonTransformer`,
whose classes are not vocabulary entries (docs/reference.md#halton-transformer); each config names its
family in a `family` field.

`SamplingConfig` holds the decoding knobs; its defaults are the reference's ImageNet-256 settings
(docs/reference.md#sampler). It travels with the weights in our folder format (`config.json`, see
`checkpoint.py`), so the CLI and the server use the sampling defaults the model was exported with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformer.masking import check_schedule
from weights.config_base import FrozenConfig


class TokenGridConfig(FrozenConfig):
    """What both transformer configs derive alike: [MASK] = K, N = grid², the head width."""

    codebook_size: int
    grid_size: int
    hidden_size: int
    num_heads: int

    @property
    def mask_token_id(self) -> int:
        """Id of [MASK] in token grids (= codebook_size, as in both references)."""
        return self.codebook_size

    @property
    def num_tokens(self) -> int:
        """N = grid_size², image tokens per sample."""
        return self.grid_size * self.grid_size

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(frozen=True)
class TransformerConfig(TokenGridConfig):
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
        family: the transformer family, always "maskgit" here (stored so a loader can tell the
            families apart; configs saved before the field existed load as "maskgit").
    """

    codebook_size: int = 1024
    grid_size: int = 16
    num_classes: int = 1000
    hidden_size: int = 768
    depth: int = 24
    num_heads: int = 16
    mlp_size: int = 3072
    dropout: float = 0.1
    family: str = "maskgit"

    def __post_init__(self) -> None:
        if self.family != "maskgit":
            raise ValueError(f"TransformerConfig.family must be 'maskgit', got {self.family!r}")
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
    def sequence_length(self) -> int:
        """N + 1: image tokens followed by the class token."""
        return self.num_tokens + 1


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


@dataclass(frozen=True)
class HaltonConfig(TokenGridConfig):
    """Hyper-parameters of `HaltonTransformer` (valeoai v2); defaults are the released base model at 256 px.

    The vocabulary differs from `TransformerConfig`'s: classes are not tokens. Token ids are the K
    codes and [MASK] = K (`mask_token_id`), so the token embedding and the tied head have K + 1 rows;
    classes index a separate embedding of C + 1 rows whose last row is the null class
    (`null_class_id` = C) used for classifier-free guidance (docs/reference.md#halton-transformer).

    Attributes:
        codebook_size: K, number of VQ codes (16,384 for LlamaGen VQ-16).
        grid_size: side of the square token grid (16 at 256 px, 24 at 384 px with f = 16).
        num_classes: C, number of class labels.
        hidden_size: D, model width.
        depth: number of blocks.
        num_heads: attention heads; head width is ⌊D / heads⌋, so q/k/v are heads·⌊D / heads⌋ wide
            (510 for the reference "small": D = 512, 6 heads).
        mlp_size: the reference's `mlp_dim` (4·D); the SwiGLU hidden width is derived from it
            (`ffn_size`).
        ffn_multiple_of: `ffn_size` is rounded up to a multiple of this (256 in the reference).
        num_registers: learned register tokens appended after the image tokens (1 in the reference).
        dropout: dropout on attention probabilities (training only).
        family: always "halton".
    """

    codebook_size: int = 16384
    grid_size: int = 16
    num_classes: int = 1000
    hidden_size: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_size: int = 3072
    ffn_multiple_of: int = 256
    num_registers: int = 1
    dropout: float = 0.1
    family: str = "halton"

    def __post_init__(self) -> None:
        if self.family != "halton":
            raise ValueError(f"HaltonConfig.family must be 'halton', got {self.family!r}")
        names = ("codebook_size", "grid_size", "num_classes", "hidden_size", "depth", "num_heads", "mlp_size")
        for name in (*names, "ffn_multiple_of"):
            if getattr(self, name) < 1:
                raise ValueError(f"HaltonConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_heads > self.hidden_size:
            raise ValueError(
                f"HaltonConfig.num_heads ({self.num_heads}) must not exceed hidden_size ({self.hidden_size})"
            )
        if self.num_registers < 0:
            raise ValueError(f"HaltonConfig.num_registers must be >= 0, got {self.num_registers}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"HaltonConfig.dropout must be in [0, 1), got {self.dropout}")

    @property
    def null_class_id(self) -> int:
        """Row of the class embedding used for the unconditional (dropped) class: C."""
        return self.num_classes

    @property
    def vocab_size(self) -> int:
        """Rows of the token embedding and of the head's output: K codes + [MASK]."""
        return self.codebook_size + 1

    @property
    def sequence_length(self) -> int:
        """N image tokens followed by the register tokens."""
        return self.num_tokens + self.num_registers

    @property
    def attention_width(self) -> int:
        """W = heads · head_dim, the width of q, k and v."""
        return self.num_heads * self.head_dim

    @property
    def ffn_size(self) -> int:
        """SwiGLU hidden width: ⌊2·mlp_size/3⌋ rounded up to a multiple of `ffn_multiple_of`."""
        multiple = self.ffn_multiple_of
        return multiple * -(-(2 * self.mlp_size // 3) // multiple)


# The reference's model sizes (its `transformer_size`): name -> (width, depth, heads); mlp_dim = 4·width.
HALTON_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (384, 6, 6),
    "small": (512, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "xlarge": (1152, 28, 16),
}
# The v2 models read LlamaGen VQ-16 tokens (f = 16): a reference preset's image side is its grid × 16.
HALTON_TOKENIZER_FACTOR = 16


def halton_preset_name(resolution: int, size: str) -> str:
    """The name of the v2 reference's model `size` at `resolution` px ("halton-imagenet256-base");
    models and sampling settings use the same name."""
    return f"halton-imagenet{resolution}-{size}"


HALTON_PRESETS: dict[str, HaltonConfig] = {
    # Every reference size at 256 px (16×16) and 384 px (24×24). Released: 256 tiny/small/base,
    # 384 small/base/large; xlarge is defined by the reference but was not released.
    **{
        halton_preset_name(resolution, size): HaltonConfig(
            grid_size=resolution // HALTON_TOKENIZER_FACTOR,
            hidden_size=width,
            depth=depth,
            num_heads=heads,
            mlp_size=4 * width,
        )
        for resolution in (256, 384)
        for size, (width, depth, heads) in HALTON_SIZES.items()
    },
    # CPU-sized models for 8×8 grids (e.g. Fashion-MNIST through an f = 4 tokenizer); the reference's
    # 23 M "tiny" is "halton-imagenet256-tiny". codebook_size is overridden from the tokenizer.
    "halton-small": HaltonConfig(
        codebook_size=1024,
        grid_size=8,
        num_classes=10,
        hidden_size=256,
        depth=8,
        num_heads=8,
        mlp_size=1024,
    ),
    "halton-tiny": HaltonConfig(
        codebook_size=256,
        grid_size=8,
        num_classes=10,
        hidden_size=128,
        depth=4,
        num_heads=4,
        mlp_size=512,
        ffn_multiple_of=128,
    ),
}

CFG_SCHEDULES = ("linear", "constant")
ORDERS = ("confidence", "halton")

# Seeds are integers in [0, MAX_SEED), everywhere: `sample()`, the CLI and the HTTP API. 2**53 is the
# largest range a JSON client holds exactly (JavaScript numbers are float64) and a JSON Schema
# validator compares exactly, so a seed the library draws and returns can always be sent back.
MAX_SEED = 2**53


def check_seed(seed: int) -> int:
    """Return `seed` if it is an integer in [0, MAX_SEED), else raise a ValueError saying so."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < MAX_SEED:
        raise ValueError(f"a seed must be an integer in [0, 2**53 = {MAX_SEED}), got {seed!r}")
    return seed


@dataclass(frozen=True)
class SamplingConfig(FrozenConfig):
    """Decoding knobs of `sample()`; defaults are the reference's ImageNet-256 settings.

    Attributes:
        steps: number of decoding steps T (= forward passes, CFG halves batched into one).
        schedule: how many tokens each step reveals: a masking schedule name (see
            `transformer.masking.SCHEDULES`): v1's tables ("arccos", ...), the v2 samplers' tables
            ("halton" for its Halton sampler, "arccos-v2" for its confidence sampler) or JAX's.
        temperature: logits are divided by it before the softmax. The reference's `sm_temp` s
            multiplies logits, so reference `sm_temp=s` is `temperature=1/s` here.
        gumbel_temperature: scale of the Gumbel noise added to log-confidences at the first step;
            it decays linearly to 0 at the last step (reference `r_temp`).
        cfg_weight: classifier-free guidance weight w (0 = conditional only).
        cfg_schedule: "linear" ramps the weight from 0 at the first step to w at the last (v1
            reference); "constant" uses w at every step (v2 reference). Both combine the halves as
            (1 + w)·ℓ_cond − w·ℓ_uncond.
        order: which masked positions a step reveals, as many as `schedule` says (any order goes
            with any schedule). "confidence" (v1): the most confident samples. "halton" (v2): the
            next positions of the 2-D Halton permutation of the grid (`gumbel_temperature` is not
            used); the v2 reference pairs it with the schedule "halton".
        randomize_order: with order "halton", roll each sample's permutation cyclically by an offset
            drawn from its seed (the v2 reference's `randomize`).
        temperature_end: None keeps `temperature` at every step. Otherwise the logit multiplier
            1/temperature moves linearly to 1/temperature_end over the steps (the v2 reference's
            `sm_temp_min` → `sm_temp_max` is temperature 1/sm_temp_min → temperature_end 1/sm_temp_max).
        temperature_warmup: during the first this-many steps the temperature is doubled (the v2
            reference halves its logit multiplier: flatter distributions early).
        top_k: if > 0, sample among the k most probable codes only (0 = all codes).
    """

    steps: int = 8
    schedule: str = "arccos"
    temperature: float = 1.0
    gumbel_temperature: float = 4.5
    cfg_weight: float = 3.0
    cfg_schedule: str = "linear"
    order: str = "confidence"
    randomize_order: bool = False
    temperature_end: float | None = None
    temperature_warmup: int = 0
    top_k: int = 0

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
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}")
        if not isinstance(self.randomize_order, bool):
            raise ValueError(f"randomize_order must be a bool, got {self.randomize_order!r}")
        if self.randomize_order and self.order != "halton":
            raise ValueError("randomize_order applies to order 'halton' only")
        if self.temperature_end is not None and not self.temperature_end > 0:
            raise ValueError(f"temperature_end must be > 0 or None, got {self.temperature_end}")
        for name in ("temperature_warmup", "top_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")

    def as_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `transformer.sample(model, class_ids, **config.as_kwargs())`."""
        return self.to_dict()


SAMPLING_PRESETS: dict[str, SamplingConfig] = {
    # README / main.py defaults of valeoai v1 (FID 6.80 at 256, 7.26 at 512).
    "maskgit-imagenet256": SamplingConfig(),
    "maskgit-imagenet512": SamplingConfig(steps=15, gumbel_temperature=7.0, cfg_weight=2.8),
    # valeoai v2 (Halton-MaskGIT): 32 steps, constant guidance, Halton order and step table. The guidance
    # weights are the README's per model (FID 10.2 / 6.40 / 4.17 at 256, 6.11 / 4.15 / 2.59 at 384); the
    # rest is the released evaluation script's (temperature 1, one warm-up step, no randomisation).
    **{
        halton_preset_name(resolution, size): SamplingConfig(
            steps=32,
            gumbel_temperature=0.0,
            cfg_weight=weight,
            cfg_schedule="constant",
            order="halton",
            schedule="halton",
            temperature_warmup=1,
        )
        for (resolution, size), weight in {
            (256, "tiny"): 1.5,
            (256, "small"): 1.0,
            (256, "base"): 0.7,
            (384, "small"): 1.0,
            (384, "base"): 0.7,
            (384, "large"): 0.5,
        }.items()
    },
    # The v2 training configuration's sampler (its periodic evaluation): w = 3, no warm-up.
    "halton": SamplingConfig(
        steps=32,
        gumbel_temperature=0.0,
        cfg_weight=3.0,
        cfg_schedule="constant",
        order="halton",
        schedule="halton",
    ),
    # The v2 reference's other sampler, its confidence baseline, with its constructor defaults: 12 steps
    # of its own arccos table, Gumbel 4.5 decaying to 0, guidance ramping 0 → 3.
    "confidence-v2": SamplingConfig(steps=12, schedule="arccos-v2"),
}


def reference_sampling_config(grid_size: int) -> SamplingConfig:
    """The reference's published sampling settings for a 16×16 (256 px) or 32×32 (512 px) grid."""
    if grid_size == 32:
        return SAMPLING_PRESETS["maskgit-imagenet512"]
    return SAMPLING_PRESETS["maskgit-imagenet256"]


def halton_sampling_config(config: HaltonConfig, *, order: str = "halton") -> SamplingConfig:
    """The v2 reference's sampling settings for a released model size, else its training-time sampler;
    with `order="confidence"`, its confidence sampler (`SAMPLING_PRESETS["confidence-v2"]`)."""
    if order == "confidence":
        return SAMPLING_PRESETS["confidence-v2"]
    if order != "halton":
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    for size, (width, depth, heads) in HALTON_SIZES.items():
        if (config.hidden_size, config.depth, config.num_heads) == (width, depth, heads):
            name = halton_preset_name(config.grid_size * HALTON_TOKENIZER_FACTOR, size)
            if name in SAMPLING_PRESETS:
                return SAMPLING_PRESETS[name]
    return SAMPLING_PRESETS["halton"]


def stored_sampling_config(values: dict[str, Any]) -> SamplingConfig:
    """A `SamplingConfig` from a stored dict (a weights folder's `config.json`, a training config).

    Folders and configs written before orders and schedules were independent store the v2 defaults
    as {"order": "halton", "schedule": "arccos"}: back then the Halton order ignored the schedule and
    always counted its steps with the v2 Halton table. That table is now the schedule "halton", and
    "arccos" with the Halton order means v1's arccos table, so the old pair is read as "halton" to
    keep decoding those folders to the same tokens. (The new meaning of that pair is reachable per
    call — CLI, HTTP, `sample()` — but not as a stored default.)
    """
    values = dict(values)
    if values.get("order") == "halton" and values.get("schedule", "arccos") == "arccos":
        values["schedule"] = "halton"
    return SamplingConfig.from_dict(values)

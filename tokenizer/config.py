"""VQGAN configuration: a frozen dataclass whose defaults are the taming-transformers f16/1024 model.

The defaults reproduce taming's `configs/imagenet_vqgan.yaml` ("vqgan_imagenet_f16_1024"), the tokenizer
of the valeoai MaskGIT reproduction (docs/reference.md#tokenizer). Field names follow
taming's `ddconfig` (`out_ch` is spelled `out_channels` here; `convert.py` maps the names). Small presets
train in minutes on CPU for 28-64 px data.

`LlamaGenVQConfig` (with `LLAMAGEN_PRESETS`) describes the other tokenizer family, LlamaGen's VQ used
by the valeoai v2 models; each config names its family in a `family` field
(docs/reference.md#llamagen-vq-tokenizer).

Dimension legend: H×W image, f = `downsample_factor`, h×w = (H/f)×(W/f) token grid, K = `codebook_size`,
D = `embed_dim` (code vector width).
"""

from __future__ import annotations

from dataclasses import dataclass

from weights.config_base import FrozenConfig
from weights.families import named_preset


class VQConfig(FrozenConfig):
    """What both VQ tokenizer configs derive from `ch_mult` and `n_embed`: levels, f, K, the grid."""

    ch_mult: tuple[int, ...]
    n_embed: int

    @property
    def num_resolutions(self) -> int:
        """Number of encoder/decoder levels."""
        return len(self.ch_mult)

    @property
    def downsample_factor(self) -> int:
        """Image side / token-grid side: 2^(len(ch_mult) - 1)."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def codebook_size(self) -> int:
        """Number of codes K (taming and LlamaGen `n_embed` / `codebook_size`); token ids are 0..K-1."""
        return self.n_embed

    def grid_shape(self, height: int, width: int) -> tuple[int, int]:
        """Token grid (h, w) for an image of `height`×`width` pixels.

        Raises:
            ValueError: a side not divisible by `downsample_factor`.
        """
        f = self.downsample_factor
        if height <= 0 or width <= 0 or height % f or width % f:
            raise ValueError(
                f"image size {height}x{width} is not a positive multiple of the downsampling factor {f}"
            )
        return height // f, width // f


@dataclass(frozen=True)
class VQGANConfig(VQConfig):
    """Architecture of a taming-style VQGAN (Encoder, VectorQuantizer, Decoder).

    Attributes:
        resolution: training image side. Decides at construction which levels have attention
            (`attn_resolutions` are feature sides at this resolution), exactly as taming does; any
            input whose sides are divisible by `downsample_factor` runs through the same layers.
        in_channels: image channels in.
        out_channels: image channels out (taming `out_ch`).
        ch: base channel count; level i has `ch * ch_mult[i]` channels.
        ch_mult: channel multiplier per level; there are len(ch_mult) - 1 downsamplings.
        num_res_blocks: ResnetBlocks per encoder level (the decoder has one more per level).
        attn_resolutions: feature-map sides (at `resolution`) after whose ResnetBlocks an AttnBlock runs.
        dropout: dropout inside ResnetBlocks.
        z_channels: encoder output channels.
        embed_dim: code vector width D (quant_conv maps z_channels -> embed_dim).
        n_embed: number of codes K.
        beta: weight of the codebook term ‖q − sg(z)‖² in taming's "legacy" quantizer loss.
        norm_groups: GroupNorm groups (taming hard-codes 32; small presets use fewer).
        family: the tokenizer family, always "vqgan" here (stored so a loader can tell the families
            apart; configs saved before the field existed load as "vqgan").
    """

    resolution: int = 256
    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.0
    z_channels: int = 256
    embed_dim: int = 256
    n_embed: int = 1024
    beta: float = 0.25
    norm_groups: int = 32
    family: str = "vqgan"

    def __post_init__(self) -> None:
        if self.family != "vqgan":
            raise ValueError(f"VQGANConfig.family must be 'vqgan', got {self.family!r}")
        # JSON and YAML give lists; keep the dataclass hashable and comparable by storing tuples.
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(int(r) for r in self.attn_resolutions))
        positive = ("resolution", "in_channels", "out_channels", "ch", "z_channels", "embed_dim", "n_embed")
        for name in positive:
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"VQGANConfig.{name} must be positive, got {getattr(self, name)!r}")
        if not self.ch_mult or min(self.ch_mult) <= 0:
            raise ValueError(f"VQGANConfig.ch_mult must be non-empty positive integers, got {self.ch_mult}")
        if self.num_res_blocks < 1:
            raise ValueError(f"VQGANConfig.num_res_blocks must be >= 1, got {self.num_res_blocks}")
        if self.resolution % self.downsample_factor:
            raise ValueError(
                f"VQGANConfig.resolution {self.resolution} is not divisible by the downsampling factor "
                f"{self.downsample_factor}"
            )
        widths = sorted({self.ch * m for m in self.ch_mult})
        if self.norm_groups <= 0 or any(w % self.norm_groups for w in widths):
            raise ValueError(
                f"VQGANConfig.norm_groups {self.norm_groups} must divide every level width {widths}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"VQGANConfig.dropout must be in [0, 1), got {self.dropout}")


PRESETS: dict[str, VQGANConfig] = {
    # Exactly taming's vqgan_imagenet_f16_1024: 72,141,699 parameters, 343 state-dict tensors.
    "imagenet-f16-1024": VQGANConfig(),
    # 32 px (Fashion-MNIST, CIFAR) -> 8×8 tokens; 275k parameters, ~0.2 s per batch-16 step on 1 CPU core.
    "tiny-f4": VQGANConfig(
        resolution=32,
        ch=16,
        ch_mult=(1, 2, 2),
        num_res_blocks=1,
        attn_resolutions=(8,),
        z_channels=32,
        embed_dim=16,
        n_embed=256,
        norm_groups=8,
    ),
    # 64 px -> 8×8 tokens (or 32 px -> 4×4); 7.5M parameters.
    "small-f8": VQGANConfig(
        resolution=64,
        ch=48,
        ch_mult=(1, 2, 2, 4),
        num_res_blocks=1,
        attn_resolutions=(8,),
        z_channels=96,
        embed_dim=64,
        n_embed=512,
        norm_groups=16,
    ),
}


def preset(name: str) -> VQGANConfig:
    """The named preset.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    return named_preset(PRESETS, name, "VQGAN")


@dataclass(frozen=True)
class LlamaGenVQConfig(VQConfig):
    """Architecture of a LlamaGen VQ tokenizer, the tokenizer of the valeoai v2 (Halton) models.

    Defaults are the released `VQ-16` file (`vq_ds16_c2i.pt`): f = 16, 16,384 codes of width 8,
    l2-normalised codes and latents (docs/reference.md#llamagen-vq-tokenizer). Unlike taming's VQGAN
    the attention placement does not depend on a resolution: it is always at the lowest level of
    the encoder and the first level of the decoder, so no `resolution` field is needed.

    Attributes:
        in_channels: image channels in.
        out_channels: image channels out.
        ch: base channel count; level i has `ch * ch_mult[i]` channels.
        ch_mult: channel multiplier per level; there are len(ch_mult) - 1 downsamplings.
        num_res_blocks: ResnetBlocks per encoder level (the decoder has one more per level).
        z_channels: encoder output channels (before `quant_conv`).
        embed_dim: code vector width D (LlamaGen `codebook_embed_dim`).
        n_embed: number of codes K (LlamaGen `codebook_size`).
        beta: weight of the commitment term ‖sg(q) − z‖² (LlamaGen `commit_loss_beta`).
        dropout: dropout inside ResnetBlocks.
        norm_groups: GroupNorm groups (32 in LlamaGen; small presets use fewer).
        family: always "llamagen-vq".
    """

    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 256
    embed_dim: int = 8
    n_embed: int = 16384
    beta: float = 0.25
    dropout: float = 0.0
    norm_groups: int = 32
    family: str = "llamagen-vq"

    def __post_init__(self) -> None:
        if self.family != "llamagen-vq":
            raise ValueError(f"LlamaGenVQConfig.family must be 'llamagen-vq', got {self.family!r}")
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        for name in ("in_channels", "out_channels", "ch", "z_channels", "embed_dim", "n_embed"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"LlamaGenVQConfig.{name} must be positive, got {getattr(self, name)!r}")
        if not self.ch_mult or min(self.ch_mult) <= 0:
            raise ValueError(
                f"LlamaGenVQConfig.ch_mult must be non-empty positive integers, got {self.ch_mult}"
            )
        if self.num_res_blocks < 1:
            raise ValueError(f"LlamaGenVQConfig.num_res_blocks must be >= 1, got {self.num_res_blocks}")
        widths = sorted({self.ch * m for m in self.ch_mult})
        if self.norm_groups <= 0 or any(w % self.norm_groups for w in widths):
            raise ValueError(
                f"LlamaGenVQConfig.norm_groups {self.norm_groups} must divide every level width {widths}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LlamaGenVQConfig.dropout must be in [0, 1), got {self.dropout}")


LLAMAGEN_PRESETS: dict[str, LlamaGenVQConfig] = {
    # Exactly the released LlamaGen VQ-16 (`vq_ds16_c2i.pt`): 71,883,403 parameters, 344 state-dict entries.
    "llamagen-vq16": LlamaGenVQConfig(),
    # 32 px (Fashion-MNIST) -> 8×8 tokens, 256 codes of width 8; CPU-sized like "tiny-f4".
    "llamagen-tiny-f4": LlamaGenVQConfig(
        ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=32, embed_dim=8, n_embed=256, norm_groups=8
    ),
    # 64 px -> 8×8 tokens; like "small-f8".
    "llamagen-small-f8": LlamaGenVQConfig(
        ch=48,
        ch_mult=(1, 2, 2, 4),
        num_res_blocks=1,
        z_channels=96,
        embed_dim=8,
        n_embed=1024,
        norm_groups=16,
    ),
}

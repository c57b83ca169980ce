"""The taming-transformers VQGAN (Esser et al. 2021) with taming's module and state-dict names.

Follows taming `modules/diffusionmodules/model.py` (Encoder, Decoder, ResnetBlock, AttnBlock, Upsample,
Downsample) and `modules/vqvae/quantize.py` (VectorQuantizer2, legacy=True), as described in
docs/reference.md#tokenizer, so the released `vqgan_imagenet_f16_1024` state dict loads
1:1 (see `convert.py`). Attention uses `scaled_dot_product_attention`, which computes the reference's
single-head softmax(q·kᵀ/√C)·v with the same q, k, v, proj_out 1×1 convs.

Images are float (B, 3, H, W) in [-1, 1] (the valeoai convention, 2x − 1 of [0, 1] pixels). Decoder
output is not clamped, as in the reference.

Dimension legend: B batch, C channels, H×W image, f downsampling factor, h×w = (H/f)×(W/f) token grid,
D code width (embed_dim), K codebook size (n_embed).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from tokenizer.config import VQGANConfig

# Inputs must lie in [-1, 1]; this slack admits decoder outputs fed back in and rounding of uint8
# conversions, but rejects [0, 255] images and badly normalised data (see `check_images`).
INPUT_RANGE_TOLERANCE = 0.05


def check_images(images: torch.Tensor, config: VQGANConfig) -> None:
    """Raise ValueError unless `images` is a float (B, C_in, H, W) batch in [-1, 1] with H, W divisible by f.

    Values further than `INPUT_RANGE_TOLERANCE` outside [-1, 1] (or NaN/inf) are an error, not a
    warning: silently tokenizing [0, 255] or un-normalised images would fill a token store with
    garbage, which is far more expensive to discover later than a failed call now.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected images of shape (B, {config.in_channels}, H, W), got {shape}")
    batch, channels, height, width = images.shape
    if channels != config.in_channels:
        raise ValueError(
            f"expected {config.in_channels} channels in images of shape (B, C, H, W), "
            f"got shape {tuple(images.shape)}"
        )
    f = config.downsample_factor
    if height == 0 or width == 0 or height % f or width % f:
        raise ValueError(
            f"image size {height}x{width} (shape {tuple(images.shape)}) is not a positive multiple of "
            f"the downsampling factor {f}"
        )
    if not images.is_floating_point():
        raise ValueError(
            f"expected float images in [-1, 1], got dtype {images.dtype}; "
            "convert uint8 pixels with x / 127.5 - 1"
        )
    if batch == 0:
        return
    low, high = torch.aminmax(images.detach())
    low, high = float(low), float(high)
    limit = 1.0 + INPUT_RANGE_TOLERANCE
    if not (-limit <= low and high <= limit):  # also catches NaN
        raise ValueError(
            "images must be in [-1, 1] (x / 127.5 - 1 of uint8 pixels); "
            f"got values in [{low:.4g}, {high:.4g}]"
        )


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """taming's GroupNorm: affine, eps 1e-6."""
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class Upsample(nn.Module):
    """Nearest ×2 then conv3x3 (key: `conv`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, C, 2H, 2W)


class Downsample(nn.Module):
    """Zero-pad right/bottom by 1, then conv3x3 stride 2 without padding (taming's asymmetric pad)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))  # (B, C, H/2, W/2)


class ResnetBlock(nn.Module):
    """GN → swish → conv3x3 → GN → swish → dropout → conv3x3, plus a 1×1 `nin_shortcut` when in ≠ out."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = group_norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)
        else:
            self.nin_shortcut = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        shortcut = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return shortcut + h  # (B, C_out, H, W)


class AttnBlock(nn.Module):
    """Single-head self-attention over all H·W positions with 1×1 conv projections and a residual."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        h = self.norm(x)

        def tokens(conv: nn.Conv2d) -> torch.Tensor:
            return conv(h).reshape(b, 1, c, height * width).transpose(2, 3)  # (B, 1, HW, C)

        # softmax(q kᵀ / √C) v, the reference's bmm formulation, as one fused kernel.
        attended = F.scaled_dot_product_attention(tokens(self.q), tokens(self.k), tokens(self.v))
        attended = attended.transpose(2, 3).reshape(b, c, height, width)  # (B, C, H, W)
        return x + self.proj_out(attended)


class _Level(nn.Module):
    """One encoder/decoder level; a container so keys read `down.{i}.block.{j}` / `up.{i}.attn.{j}`."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()


class _Mid(nn.Module):
    """ResnetBlock → AttnBlock → ResnetBlock at the lowest resolution (`mid.block_1/attn_1/block_2`)."""

    def __init__(self, channels: int, dropout: float, groups: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout, groups)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, dropout, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """Images (B, C_in, H, W) -> latents (B, z_channels, H/f, W/f)."""

    def __init__(self, config: VQGANConfig):
        super().__init__()
        c, groups = config, config.norm_groups
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, kernel_size=3, stride=1, padding=1)
        in_mult = (1, *c.ch_mult)
        resolution = c.resolution
        self.down = nn.ModuleList()
        for level, mult in enumerate(c.ch_mult):
            stage = _Level()
            block_in = c.ch * in_mult[level]
            for _ in range(c.num_res_blocks):
                stage.block.append(ResnetBlock(block_in, c.ch * mult, c.dropout, groups))
                block_in = c.ch * mult
                if resolution in c.attn_resolutions:
                    stage.attn.append(AttnBlock(block_in, groups))
            if level != c.num_resolutions - 1:
                stage.downsample = Downsample(block_in)
                resolution //= 2
            self.down.append(stage)
        self.mid = _Mid(block_in, c.dropout, groups)
        self.norm_out = group_norm(block_in, groups)
        self.conv_out = nn.Conv2d(block_in, c.z_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # (B, ch, H, W)
        for stage in self.down:
            for index, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn) > 0:
                    h = stage.attn[index](h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, z_channels, h, w)


class Decoder(nn.Module):
    """Latents (B, z_channels, h, w) -> images (B, C_out, h·f, w·f), not clamped."""

    def __init__(self, config: VQGANConfig):
        super().__init__()
        c, groups = config, config.norm_groups
        block_in = c.ch * c.ch_mult[-1]
        resolution = c.resolution // c.downsample_factor
        self.conv_in = nn.Conv2d(c.z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = _Mid(block_in, c.dropout, groups)
        levels: list[_Level] = []
        for level in reversed(range(c.num_resolutions)):
            stage = _Level()
            block_out = c.ch * c.ch_mult[level]
            for _ in range(c.num_res_blocks + 1):
                stage.block.append(ResnetBlock(block_in, block_out, c.dropout, groups))
                block_in = block_out
                if resolution in c.attn_resolutions:
                    stage.attn.append(AttnBlock(block_in, groups))
            if level != 0:
                stage.upsample = Upsample(block_in)
                resolution *= 2
            levels.insert(0, stage)  # up.0 is the highest resolution, as in taming
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(block_in, groups)
        self.conv_out = nn.Conv2d(block_in, c.out_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))  # (B, ch·ch_mult[-1], h, w)
        for stage in reversed(self.up):
            for index, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn) > 0:
                    h = stage.attn[index](h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, C_out, H, W)


class QuantizedLatents(NamedTuple):
    """Output of `VectorQuantizer.forward`.

    Attributes:
        quantized: (B, D, h, w) straight-through codes z + sg(q − z): values of q, gradients to z.
        indices: (B, h, w) int64 code ids in [0, K).
        codebook_loss: β·mean‖q − sg(z)‖², the term that moves the codes (taming legacy puts β here).
        commitment_loss: mean‖sg(q) − z‖², the term that pulls the encoder to its codes.
    """

    quantized: torch.Tensor
    indices: torch.Tensor
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor


class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook (taming VectorQuantizer2, legacy=True, no l2-normalisation)."""

    def __init__(self, n_embed: int, embed_dim: int, beta: float):
        super().__init__()
        self.n_embed, self.embed_dim, self.beta = n_embed, embed_dim, beta
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)  # taming's init

    def nearest_codes(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) latents -> (B, h, w) ids of the nearest codes by squared Euclidean distance."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # (B·h·w, D)
        # Distances in fp32 even under bf16 autocast: rounding the ‖z‖² + ‖e‖² − 2 z·e expansion in
        # bf16 would change which code is nearest.
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = flat.float()
            codes = self.embedding.weight.float()  # (K, D)
            distances = (
                flat.pow(2).sum(1, keepdim=True) + codes.pow(2).sum(1) - 2.0 * flat @ codes.t()
            )  # (B·h·w, K)
        return distances.argmin(1).reshape(b, h, w)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, h, w) ids -> (B, D, h, w) code vectors."""
        return self.embedding(indices).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor) -> QuantizedLatents:
        indices = self.nearest_codes(z)  # (B, h, w)
        q = self.lookup(indices).to(z.dtype)  # (B, D, h, w)
        codebook_loss = self.beta * torch.mean((q - z.detach()) ** 2)
        commitment_loss = torch.mean((q.detach() - z) ** 2)
        quantized = z + (q - z).detach()  # straight-through estimator
        return QuantizedLatents(quantized, indices, codebook_loss, commitment_loss)


class VQGANOutput(NamedTuple):
    """Output of `VQGAN.forward`.

    Attributes:
        reconstruction: (B, C_out, H, W) decoded images, not clamped.
        indices: (B, h, w) int64 code ids.
        codebook_loss: β·mean‖q − sg(z)‖² (gradient reaches the codebook only).
        commitment_loss: mean‖sg(q) − z‖² (gradient reaches the encoder only).
    """

    reconstruction: torch.Tensor
    indices: torch.Tensor
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor

    @property
    def quantizer_loss(self) -> torch.Tensor:
        """taming's `qloss`: commitment + β·codebook term, the value the reference trains on."""
        return self.codebook_loss + self.commitment_loss


class VQTokenizer(nn.Module):
    """Images <-> token grids: encoder → quant_conv → quantizer → post_quant_conv → decoder.

    The API both tokenizer families share (`VQGAN` here, `tokenizer.llamagen.LlamaGenVQ`); each
    family builds its own encoder, decoder and quantizer and passes them in, in the order of its
    released state dict.

    Args:
        config: the family's config (`n_embed`, `embed_dim`, `z_channels`, …); stored as `self.config`.
        encoder, decoder: (B, C_in, H, W) -> (B, z_channels, h, w) and back.
        quantize: a quantizer with `nearest_codes`, `lookup` and a `forward` returning `QuantizedLatents`.
    """

    def __init__(self, config, encoder: nn.Module, decoder: nn.Module, quantize: nn.Module):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.decoder = decoder
        self.quantize = quantize
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, kernel_size=1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, kernel_size=1)

    @property
    def last_decoder_layer(self) -> nn.Parameter:
        """Weight of the decoder's final conv (taming's `get_last_layer`, for the adaptive GAN weight)."""
        return self.decoder.conv_out.weight

    def encode_to_latents(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) images in [-1, 1] -> (B, D, h, w) pre-quantisation latents."""
        check_images(images, self.config)
        return self.quant_conv(self.encoder(images))

    def decode_from_latents(self, quantized: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) (quantised) latents -> (B, C_out, H, W) images, not clamped."""
        return self.decoder(self.post_quant_conv(quantized))

    @torch.no_grad()
    def encode_to_indices(self, images: torch.Tensor) -> torch.Tensor:
        """Tokenize images.

        Args:
            images: (B, C_in, H, W) float in [-1, 1]; H and W multiples of `config.downsample_factor`.

        Returns:
            (B, h, w) int64 code ids in [0, K), rows in raster order.

        Raises:
            ValueError: wrong rank or channel count, a side not divisible by the factor, non-float
                dtype, or values outside [-1, 1] (beyond a small tolerance).
        """
        return self.quantize.nearest_codes(self.encode_to_latents(images))

    @torch.no_grad()
    def decode_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Detokenize code ids (LlamaGen's `decode_code`).

        Args:
            indices: (B, h, w) integer code ids in [0, K).

        Returns:
            (B, C_out, h·f, w·f) float images, about [-1, 1] and not clamped (as the references).

        Raises:
            ValueError: wrong rank, non-integer dtype, or an id outside [0, K).
        """
        if not isinstance(indices, torch.Tensor) or indices.ndim != 3:
            shape = tuple(indices.shape) if isinstance(indices, torch.Tensor) else type(indices).__name__
            raise ValueError(f"expected indices of shape (B, h, w), got {shape}")
        if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            raise ValueError(f"expected integer indices, got dtype {indices.dtype}")
        size = self.config.n_embed
        if indices.numel() > 0:
            low, high = int(indices.min()), int(indices.max())
            if low < 0 or high >= size:
                raise ValueError(
                    f"indices must be in [0, {size}) for a codebook of {size} codes; "
                    f"got values in [{low}, {high}]"
                )
        quantized = self.quantize.lookup(indices.long())  # (B, D, h, w)
        return self.decode_from_latents(quantized.to(self.post_quant_conv.weight.dtype))

    def forward(self, images: torch.Tensor) -> VQGANOutput:
        """Encode, quantise (straight-through) and decode; the training pass.

        Args:
            images: (B, C_in, H, W) float in [-1, 1].

        Returns:
            VQGANOutput with the reconstruction, indices and the two quantiser loss terms
            (`quantizer_loss` is their sum, the value both references train on).
        """
        z = self.encode_to_latents(images)  # (B, D, h, w)
        quantized = self.quantize(z)
        reconstruction = self.decode_from_latents(quantized.quantized)  # (B, C_out, H, W)
        return VQGANOutput(
            reconstruction, quantized.indices, quantized.codebook_loss, quantized.commitment_loss
        )


class VQGAN(VQTokenizer):
    """The taming VQGAN. Submodule names match taming's VQModel (minus its `loss`).

    Args:
        config: architecture (default: `VQGANConfig()`); stored as `self.config`.
    """

    def __init__(self, config: VQGANConfig | None = None):
        config = config or VQGANConfig()
        super().__init__(
            config,
            Encoder(config),
            Decoder(config),
            VectorQuantizer(config.n_embed, config.embed_dim, config.beta),
        )

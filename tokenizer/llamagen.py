"""The LlamaGen VQ tokenizer (Sun et al. 2024), the tokenizer of the valeoai v2 (Halton-MaskGIT) models.

Follows LlamaGen's `VQModel` as described in docs/reference.md#llamagen-vq-tokenizer: a taming-style
convolutional encoder/decoder (the same ResnetBlock, AttnBlock, Downsample and Upsample as
`tokenizer.vqgan`, whose parameter names LlamaGen kept) arranged under LlamaGen's module names, and
a vector quantizer that **l2-normalises both the latents and the codebook rows** on every call, for
encoding and decoding alike. The stored codebook is not unit-norm; only normalised rows are ever
used.

Module names match the released `vq_ds16_c2i.pt` state dict 1:1 (`tokenizer/convert_llamagen.py`):

* encoder: `conv_in`, `conv_blocks.{level}.res.{j}` (+ `attn.{j}` at the last level only,
  + `downsample` on all but the last level), `mid.{0,1,2}` (Res, Attn, Res), `norm_out`, `conv_out`;
* decoder: `conv_in`, `mid.{0,1,2}`, `conv_blocks.{i}` in **reversed** level order (block 0 is the
  lowest resolution, has attention and one more ResnetBlock than the encoder's levels; blocks
  0 … L−2 end with `upsample`), `norm_out`, `conv_out`;
* `quantize.embedding` (K × D codebook) and `quantize.codebook_used` (a 65,536-entry buffer
  LlamaGen's trainer writes and nothing reads; kept so the state dicts match);
* `quant_conv` (z_channels → D) and `post_quant_conv` (D → z_channels), 1×1.

The encode / quantise / decode plumbing is `tokenizer.vqgan.VQTokenizer`, shared with the VQGAN:
`encode_to_indices`, `decode_from_indices`, the training `forward` returning a `VQGANOutput`,
`encode_to_latents` / `quantize` / `decode_from_latents` for the trainer, and `last_decoder_layer`.
LlamaGen's optional entropy term (weight 0 in the released recipe) is not implemented.

Dimension legend: B batch, C channels, H×W image, f downsampling factor, h×w = (H/f)×(W/f) token
grid, D code width (`embed_dim`, 8 in VQ-16), K codebook size (`n_embed`, 16,384 in VQ-16).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tokenizer.config import LlamaGenVQConfig
from tokenizer.vqgan import (
    AttnBlock,
    Downsample,
    QuantizedLatents,
    ResnetBlock,
    Upsample,
    VQTokenizer,
    group_norm,
)

# LlamaGen's usage buffer has this fixed length whatever the codebook size.
CODEBOOK_USED_LENGTH = 65536


class ConvBlock(nn.Module):
    """One encoder/decoder level; a container so keys read `conv_blocks.{i}.res.{j}` / `.attn.{j}`."""

    def __init__(self) -> None:
        super().__init__()
        self.res = nn.ModuleList()
        self.attn = nn.ModuleList()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, block in enumerate(self.res):
            x = block(x)
            if len(self.attn) > 0:
                x = self.attn[index](x)
        if hasattr(self, "downsample"):
            x = self.downsample(x)
        if hasattr(self, "upsample"):
            x = self.upsample(x)
        return x


def _mid(channels: int, dropout: float, groups: int) -> nn.ModuleList:
    """`mid.0` ResnetBlock, `mid.1` AttnBlock, `mid.2` ResnetBlock at the lowest resolution."""
    return nn.ModuleList(
        [
            ResnetBlock(channels, channels, dropout, groups),
            AttnBlock(channels, groups),
            ResnetBlock(channels, channels, dropout, groups),
        ]
    )


class Encoder(nn.Module):
    """Images (B, C_in, H, W) -> latents (B, z_channels, H/f, W/f)."""

    def __init__(self, config: LlamaGenVQConfig):
        super().__init__()
        c, groups = config, config.norm_groups
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, kernel_size=3, stride=1, padding=1)
        in_mult = (1, *c.ch_mult)
        self.conv_blocks = nn.ModuleList()
        last = c.num_resolutions - 1
        for level, mult in enumerate(c.ch_mult):
            block = ConvBlock()
            block_in = c.ch * in_mult[level]
            for _ in range(c.num_res_blocks):
                block.res.append(ResnetBlock(block_in, c.ch * mult, c.dropout, groups))
                block_in = c.ch * mult
                if level == last:  # attention at the lowest level only, whatever the input size
                    block.attn.append(AttnBlock(block_in, groups))
            if level != last:
                block.downsample = Downsample(block_in)
            self.conv_blocks.append(block)
        self.mid = _mid(block_in, c.dropout, groups)
        self.norm_out = group_norm(block_in, groups)
        self.conv_out = nn.Conv2d(block_in, c.z_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # (B, ch, H, W)
        for block in self.conv_blocks:
            h = block(h)
        for layer in self.mid:
            h = layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, z_channels, h, w)


class Decoder(nn.Module):
    """Latents (B, z_channels, h, w) -> images (B, C_out, h·f, w·f), not clamped."""

    def __init__(self, config: LlamaGenVQConfig):
        super().__init__()
        c, groups = config, config.norm_groups
        block_in = c.ch * c.ch_mult[-1]
        self.conv_in = nn.Conv2d(c.z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = _mid(block_in, c.dropout, groups)
        self.conv_blocks = nn.ModuleList()
        last = c.num_resolutions - 1
        for index in range(c.num_resolutions):  # block 0 is the lowest resolution (reversed levels)
            block = ConvBlock()
            block_out = c.ch * c.ch_mult[last - index]
            for _ in range(c.num_res_blocks + 1):
                block.res.append(ResnetBlock(block_in, block_out, c.dropout, groups))
                block_in = block_out
                if index == 0:
                    block.attn.append(AttnBlock(block_in, groups))
            if index != last:
                block.upsample = Upsample(block_in)
            self.conv_blocks.append(block)
        self.norm_out = group_norm(block_in, groups)
        self.conv_out = nn.Conv2d(block_in, c.out_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)  # (B, ch·ch_mult[-1], h, w)
        for layer in self.mid:
            h = layer(h)
        for block in self.conv_blocks:
            h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, C_out, H, W)


class VectorQuantizer(nn.Module):
    """Nearest code by squared distance between **l2-normalised** latents and codebook rows.

    Ties go to the lowest index (argmin). The quantised output is the normalised codebook row.
    """

    def __init__(self, n_embed: int, embed_dim: int, beta: float):
        super().__init__()
        self.n_embed, self.embed_dim, self.beta = n_embed, embed_dim, beta
        # A buffer first, then the embedding: the released state dict lists them in this order.
        self.register_buffer("codebook_used", torch.zeros(CODEBOOK_USED_LENGTH))
        self.embedding = nn.Embedding(n_embed, embed_dim)
        # LlamaGen's init: uniform in ±1/K, then rows scaled to unit norm.
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)
        with torch.no_grad():
            self.embedding.weight.copy_(F.normalize(self.embedding.weight, p=2, dim=-1))

    def normalised_codebook(self) -> torch.Tensor:
        """(K, D) unit-norm codebook rows."""
        return F.normalize(self.embedding.weight, p=2, dim=-1)

    def nearest_codes(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) latents -> (B, h, w) ids of the nearest normalised codes."""
        b, d, h, w = z.shape
        # fp32 distances even under autocast: bf16 rounding would change which code is nearest.
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, d).float(), p=2, dim=-1)  # (B·h·w, D)
            codes = self.normalised_codebook().float()  # (K, D)
            distances = (
                flat.pow(2).sum(1, keepdim=True) + codes.pow(2).sum(1) - 2.0 * flat @ codes.t()
            )  # (B·h·w, K)
        return distances.argmin(1).reshape(b, h, w)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, h, w) ids -> (B, D, h, w) normalised code vectors."""
        return F.embedding(indices, self.normalised_codebook()).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor) -> QuantizedLatents:
        """Quantise (B, D, h, w) latents with a straight-through estimator.

        Returns:
            QuantizedLatents whose `quantized` is normalised z + sg(q − normalised z), with
            LlamaGen's loss terms: `codebook_loss` = mean‖q − sg(ẑ)‖² (unweighted) and
            `commitment_loss` = β·mean‖sg(q) − ẑ‖², ẑ the normalised latents.
        """
        indices = self.nearest_codes(z)  # (B, h, w)
        z = F.normalize(z, p=2, dim=1)  # (B, D, h, w)
        q = self.lookup(indices).to(z.dtype)  # (B, D, h, w)
        codebook_loss = torch.mean((q - z.detach()) ** 2)
        commitment_loss = self.beta * torch.mean((q.detach() - z) ** 2)
        quantized = z + (q - z).detach()  # straight-through estimator
        return QuantizedLatents(quantized, indices, codebook_loss, commitment_loss)


class LlamaGenVQ(VQTokenizer):
    """LlamaGen's VQ model; the API of `tokenizer.vqgan.VQTokenizer`.

    Args:
        config: architecture (default: the released VQ-16); stored as `self.config`.
    """

    def __init__(self, config: LlamaGenVQConfig | None = None):
        config = config or LlamaGenVQConfig()
        # Registration order = the released state dict's order.
        super().__init__(
            config,
            Encoder(config),
            Decoder(config),
            VectorQuantizer(config.n_embed, config.embed_dim, config.beta),
        )

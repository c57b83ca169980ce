"""The reference VQGAN computation re-stated plainly, as the speed baseline of `bench_tokenizer`.

The taming-transformers f16 VQGAN the way the reference runs it (docs/reference.md#tokenizer): fp32,
NCHW tensors, `nn.GroupNorm`, swish written as x·sigmoid(x), nearest ×2 upsampling, and the
attention block's explicit form (q, k, v 1×1 convs, q·kᵀ with `bmm`, softmax, `bmm` with v,
`proj_out`). Module names are taming's, so the state dict of a `tokenizer.vqgan.VQGAN` loads with
`load_state_dict` unchanged. Only the inference paths exist (encode to indices, decode from indices);
this is a measuring stick, not a second implementation to train or ship.

Dimension legend: B batch, C channels, H×W feature map, h×w token grid, D code width, K codes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tokenizer.config import VQGANConfig


def _normalize(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = _normalize(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = _normalize(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, 1, 0)
        self.has_shortcut = in_channels != out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(_swish(self.norm2(h)))
        if self.has_shortcut:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _normalize(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        b, c, height, width = q.shape
        q = q.reshape(b, c, height * width).permute(0, 2, 1)  # (B, HW, C)
        k = k.reshape(b, c, height * width)  # (B, C, HW)
        weights = torch.bmm(q, k) * (int(c) ** (-0.5))  # (B, HW, HW)
        weights = torch.softmax(weights, dim=2)
        v = v.reshape(b, c, height * width)
        h = torch.bmm(v, weights.permute(0, 2, 1)).reshape(b, c, height, width)  # (B, C, H, W)
        return x + self.proj_out(h)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0))


class _Level(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()


class _Mid(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, groups)


class Encoder(nn.Module):
    def __init__(self, c: VQGANConfig):
        super().__init__()
        g = c.norm_groups
        self.num_resolutions, self.num_res_blocks = c.num_resolutions, c.num_res_blocks
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, 3, 1, 1)
        in_mult, resolution = (1, *c.ch_mult), c.resolution
        self.down = nn.ModuleList()
        for level in range(c.num_resolutions):
            stage, block_in = _Level(), c.ch * in_mult[level]
            for _ in range(c.num_res_blocks):
                stage.block.append(ResnetBlock(block_in, c.ch * c.ch_mult[level], g))
                block_in = c.ch * c.ch_mult[level]
                if resolution in c.attn_resolutions:
                    stage.attn.append(AttnBlock(block_in, g))
            if level != c.num_resolutions - 1:
                stage.downsample = Downsample(block_in)
                resolution //= 2
            self.down.append(stage)
        self.mid = _Mid(block_in, g)
        self.norm_out = _normalize(block_in, g)
        self.conv_out = nn.Conv2d(block_in, c.z_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in range(self.num_resolutions):
            for i in range(self.num_res_blocks):
                h = self.down[level].block[i](h)
                if len(self.down[level].attn) > 0:
                    h = self.down[level].attn[i](h)
            if level != self.num_resolutions - 1:
                h = self.down[level].downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(_swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, c: VQGANConfig):
        super().__init__()
        g = c.norm_groups
        self.num_resolutions, self.num_res_blocks = c.num_resolutions, c.num_res_blocks
        block_in = c.ch * c.ch_mult[-1]
        resolution = c.resolution // c.downsample_factor
        self.conv_in = nn.Conv2d(c.z_channels, block_in, 3, 1, 1)
        self.mid = _Mid(block_in, g)
        self.up = nn.ModuleList()
        for level in reversed(range(c.num_resolutions)):
            stage, block_out = _Level(), c.ch * c.ch_mult[level]
            for _ in range(c.num_res_blocks + 1):
                stage.block.append(ResnetBlock(block_in, block_out, g))
                block_in = block_out
                if resolution in c.attn_resolutions:
                    stage.attn.append(AttnBlock(block_in, g))
            if level != 0:
                stage.upsample = Upsample(block_in)
                resolution *= 2
            self.up.insert(0, stage)
        self.norm_out = _normalize(block_in, g)
        self.conv_out = nn.Conv2d(block_in, c.out_channels, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for level in reversed(range(self.num_resolutions)):
            for i in range(self.num_res_blocks + 1):
                h = self.up[level].block[i](h)
                if len(self.up[level].attn) > 0:
                    h = self.up[level].attn[i](h)
            if level != 0:
                h = self.up[level].upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    def __init__(self, n_embed: int, embed_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) -> (B, h, w) nearest code ids, ‖z‖² + ‖e‖² − 2 z·e as the reference writes it."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        e = self.embedding.weight
        distances = (
            torch.sum(flat**2, dim=1, keepdim=True)
            + torch.sum(e**2, dim=1)
            - 2 * torch.einsum("bd,dn->bn", flat, e.t())
        )
        return torch.argmin(distances, dim=1).reshape(b, h, w)


class TamingVQGAN(nn.Module):
    """Reference-style VQGAN: `encode_to_indices` / `decode_from_indices` with taming's state-dict keys."""

    def __init__(self, config: VQGANConfig):
        super().__init__()
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantize = VectorQuantizer(config.n_embed, config.embed_dim)
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)

    @torch.no_grad()
    def encode_to_indices(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, h, w) code ids."""
        return self.quantize.indices(self.quant_conv(self.encoder(images)))

    @torch.no_grad()
    def decode_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, h, w) code ids -> (B, 3, H, W) images, not clamped."""
        quantized = self.quantize.embedding(indices).permute(0, 3, 1, 2).contiguous()
        return self.decoder(self.post_quant_conv(quantized))

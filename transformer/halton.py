"""`HaltonTransformer`: the valeoai v2 (Halton-MaskGIT) class-to-image transformer, parameter for parameter.

Follows the v2 reference's `Transformer` as described in docs/reference.md#halton-transformer:

* **no class token in the sequence**: the class embedding (`cls_emb`, C + 1 rows, the last one the
  null class) is the only conditioning and drives adaLN-zero modulation in every block;
* the image tokens (`tok_emb`, K + 1 rows: codes and [MASK]) plus learned raster-order positions
  (`pos_emb`, N rows), followed by `num_registers` learned register tokens (`reg_tokens`) that get
  no position and are dropped before the final norm;
* blocks: (shift₁, scale₁, gate₁, shift₂, scale₂, gate₂) = Linear(SiLU(c)) (`mlp.1`), then
  x + gate₁·Attn(RMSNorm(x)·(1 + scale₁) + shift₁) and x + gate₂·SwiGLU(RMSNorm(x)·(1 + scale₂) + shift₂);
  attention has bias-free `wq`/`wk`/`wv`/`wo` and **QK-norm: one weightless RMSNorm over the whole
  q (and k) vector of width heads·head_dim, before the split into heads**; SwiGLU is
  `w2(SiLU(w1 x) ⊙ w3 x)` without biases;
* a final adaptive norm (`last_norm`: RMSNorm with weight and bias, modulated by (shift, scale) from
  `mlp.1`) and a head whose weight **is** `tok_emb.weight` (tied; both keys are in the state dict)
  with its own bias, giving K + 1 logits (the last one for [MASK]).

Every RMSNorm computes x·rsqrt(mean(x²) + 1e-5) in float32, casts back, then applies its weight
(and bias). Module names and registration order are the reference's, so a released `.pth` state
dict loads strictly and 1:1 (`transformer/convert_halton.py`).

Called like `MaskTransformer` (`model(tokens, class_ids, drop_label, *, positions, with_mask_logit)`)
so `sample()`, the training objective and the editors work with either family; logits are over
the K codes unless `with_mask_logit=True` asks for the reference's K + 1.

Dimensions: B batch, h×w token grid (h = w = grid_size), N = h·w image tokens, R registers,
S = N + R sequence length, D width, W = heads·head_dim attention width, F SwiGLU width,
K codebook size, C classes.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from transformer.config import HaltonConfig
from transformer.model import MaskPredictor

NORM_EPS = 1e-5


class RMSNorm(nn.Module):
    """x·rsqrt(mean(x²) + eps) in float32, cast back, then × `weight` (+ `bias`) when present."""

    def __init__(self, dim: int, *, weight: bool = True, bias: bool = False, eps: float = NORM_EPS) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if weight else None
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x·(1 + scale) + shift, broadcast over the sequence (shift, scale: (B, 1, D))."""
    return x * (1 + scale) + shift


class Attention(nn.Module):
    """Bias-free multi-head self-attention with QK-norm over the full q and k vectors."""

    def __init__(self, config: HaltonConfig) -> None:
        super().__init__()
        width, inner = config.hidden_size, config.attention_width
        self.num_heads, self.dropout = config.num_heads, config.dropout
        self.wq = nn.Linear(width, inner, bias=False)
        self.wk = nn.Linear(width, inner, bias=False)
        self.wv = nn.Linear(width, inner, bias=False)
        self.wo = nn.Linear(inner, width, bias=False)
        self.q_norm = RMSNorm(inner, weight=False)  # no parameters, so no state-dict keys
        self.k_norm = RMSNorm(inner, weight=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.num_heads, -1).transpose(1, 2)  # (B, H, S, W/H)

        q = heads(self.q_norm(self.wq(x)))  # normalised over all W before the split into heads
        k = heads(self.k_norm(self.wk(x)))
        v = heads(self.wv(x))
        attended = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, S, W/H)
        return self.wo(attended.transpose(1, 2).reshape(batch, length, -1))  # (B, S, D)


class FeedForward(nn.Module):
    """SwiGLU: w2(SiLU(w1 x) ⊙ w3 x), no biases."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(width, hidden, bias=False)
        self.w2 = nn.Linear(hidden, width, bias=False)
        self.w3 = nn.Linear(width, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """adaLN-zero block; chunk order (shift₁, scale₁, gate₁, shift₂, scale₂, gate₂)."""

    def __init__(self, config: HaltonConfig) -> None:
        super().__init__()
        width = config.hidden_size
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        self.ln1 = RMSNorm(width)
        self.attn = Attention(config)
        self.ln2 = RMSNorm(width)
        self.ff = FeedForward(width, config.ffn_size)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        modulation = self.mlp(condition)[:, None]  # (B, 1, 6D)
        shift1, scale1, gate1, shift2, scale2, gate2 = modulation.chunk(6, dim=-1)  # (B, 1, D) each
        x = x + gate1 * self.attn(modulate(self.ln1(x), shift1, scale1))
        return x + gate2 * self.ff(modulate(self.ln2(x), shift2, scale2))  # (B, S, D)


class BlockStack(nn.Module):
    """The blocks, at `transformer.layers.{i}` as in the reference's keys."""

    def __init__(self, config: HaltonConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Block(config) for _ in range(config.depth))

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        for block in self.layers:
            x = block(x, condition)
        return x


class AdaNorm(nn.Module):
    """Final norm: RMSNorm (weight and bias, `norm_final`)·(1 + scale) + shift; (shift, scale) from `mlp.1`.

    Its modulation Linear is not zeroed at init (only the blocks' are).
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm_final = RMSNorm(width, bias=True)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        shift, scale = self.mlp(condition)[:, None].chunk(2, dim=-1)  # (B, 1, D) each
        return modulate(self.norm_final(x), shift, scale)


class HaltonTransformer(MaskPredictor):
    """The class-conditional transformer of the valeoai v2 reference (Halton-MaskGIT).

    Call it as `model(tokens, class_ids, drop_label)` to get logits over the K codes.

    Args:
        config: sizes and vocabulary (see `HaltonConfig`).
    """

    tied_weights: ClassVar[dict[str, str]] = {"head.weight": "tok_emb.weight"}

    def __init__(self, config: HaltonConfig) -> None:
        super().__init__()
        self.config = config
        width = config.hidden_size
        # Registration order = the reference's state-dict order.
        self.cls_emb = nn.Embedding(config.num_classes + 1, width)  # the last row is the null class
        self.tok_emb = nn.Embedding(config.vocab_size, width)
        self.pos_emb = nn.Embedding(config.num_tokens, width)
        self.transformer = BlockStack(config)
        self.last_norm = AdaNorm(width)
        self.head = nn.Linear(width, config.vocab_size)
        self.head.weight = self.tok_emb.weight  # tied: one tensor under two keys
        self.reg_tokens = nn.Embedding(max(config.num_registers, 0), width)
        self.initialize_weights()

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """The reference's from-scratch init: xavier Linears, N(0, 0.02²) embeddings, zeroed block adaLN."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        # After the Linears: the tied head's xavier init is replaced by the embedding's.
        for embedding in (self.cls_emb, self.tok_emb, self.pos_emb, self.reg_tokens):
            nn.init.normal_(embedding.weight, std=0.02)
        for block in self.transformer.layers:
            nn.init.zeros_(block.mlp[1].weight)
            nn.init.zeros_(block.mlp[1].bias)

    def hidden_states(
        self, tokens: torch.Tensor, class_ids: torch.Tensor, drop_label: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Final (adaptively normalised) hidden states of the N image positions.

        Args:
            tokens: LongTensor[B, h, w], codes with masked positions set to `mask_token_id`.
            class_ids: LongTensor[B] in [0, num_classes).
            drop_label: BoolTensor[B]; True replaces the class by the null class (unconditional).

        Returns:
            FloatTensor[B, N, D].
        """
        if not torch.compiler.is_compiling():
            self.check_inputs(tokens, class_ids, drop_label)
        config = self.config
        batch = tokens.shape[0]
        classes = class_ids.long()
        if drop_label is not None:
            classes = torch.where(drop_label.bool(), config.null_class_id, classes)
        condition = self.cls_emb(classes)  # (B, D)
        x = self.tok_emb(tokens.reshape(batch, -1).long()) + self.pos_emb.weight  # (B, N, D)
        registers = self.reg_tokens.weight.expand(batch, -1, -1)  # (B, R, D)
        x = torch.cat([x, registers.to(x.dtype)], dim=1)  # (B, S, D)
        x = self.transformer(x, condition)  # (B, S, D)
        return self.last_norm(x[:, : config.num_tokens], condition)  # (B, N, D): registers dropped

    def logits_from_hidden(
        self, hidden: torch.Tensor, *, positions: torch.Tensor | None = None, with_mask_logit: bool = False
    ) -> torch.Tensor:
        """Tied head: hidden · tok_embᵀ + head.bias over the K codes (plus [MASK] on request).

        Args:
            hidden: FloatTensor[B, N, D] from `hidden_states`.
            positions: optional BoolTensor[B, N] (or [B, h, w]); only these positions get logits.
            with_mask_logit: add the [MASK] column (the reference's K + 1 wide output).

        Returns:
            FloatTensor[B, N, V] or, with `positions`, FloatTensor[M, V] for the M selected positions
            in (batch, position) row-major order; V = K (+ 1 with the [MASK] logit).
        """
        width = self.config.codebook_size + int(with_mask_logit)
        weight, bias = self.head.weight[:width], self.head.bias[:width]  # (V, D), (V,)
        if positions is None:
            return F.linear(hidden, weight, bias)  # (B, N, V)
        positions = self.flat_positions(positions, hidden)
        selected = hidden[positions]  # (M, D)
        return F.linear(selected, weight.to(selected.dtype), bias.to(selected.dtype))  # (M, V)

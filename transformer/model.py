"""`MaskTransformer`: the valeoai v1 MaskGIT bidirectional transformer, parameter for parameter.

Follows docs/reference.md#transformer (valeoai/Maskgit-pytorch v1 `Network/transformer.py`): the image tokens
in raster order followed by **one class token last**; learned positions; an embedding MLP
(`first_layer`); pre-LN blocks; an output MLP (`last_layer`); an output head **tied** to the token
embedding plus a learned per-position, per-vocabulary `bias`. Parameter names and shapes are the
reference's, so its `.pth` state dict loads strictly (`transformer/convert.py`).

Two deliberate differences in *how* (not *what*) it computes:

* Attention runs through `F.linear` on the stored packed `in_proj_weight` followed by
  `scaled_dot_product_attention`, instead of `nn.MultiheadAttention`: same parameters and maths,
  but no pathological bf16-autocast path on CPU (docs/architecture.md#platform-notes).
* The head only computes what is used: never the class-token position, never the 1001 class /
  null-class vocabulary rows, the [MASK] logit only on request (`with_mask_logit=True` gives the
  reference's 1025-wide output), and, with `positions`, only the requested token positions.

Dimensions: B batch, h×w token grid (h = w = grid_size), N = h·w image tokens, S = N + 1 sequence
length, D width, H heads, K codebook size (logits over codes), V vocabulary rows (K + 1 + C + 1).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from transformer.config import HaltonConfig, TransformerConfig
from weights import unwrap_model as unwrap_any_model


class PackedSelfAttention(nn.Module):
    """Multi-head self-attention with `nn.MultiheadAttention`'s parameter layout.

    Parameters `in_proj_weight` [3D, D] (q, k, v stacked), `in_proj_bias` [3D] and `out_proj`
    (Linear D→D); dropout applies to the attention probabilities only, as in the reference.
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * hidden_size))
        self.out_proj = nn.Linear(hidden_size, hidden_size)
        # nn.MultiheadAttention's initialisation, so fresh models start where the reference's do.
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, S, 3D)
        qkv = qkv.view(batch, length, 3, self.num_heads, width // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, S, D/H)
        attended = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, S, D/H)
        attended = attended.transpose(1, 2).reshape(batch, length, width)  # (B, S, D)
        return self.out_proj(attended)


class Attention(nn.Module):
    """Holds the attention as `.mha`, which is where the reference's keys put it."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.mha = PackedSelfAttention(hidden_size, num_heads, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mha(x)


class FeedForward(nn.Module):
    """Linear D→M, GELU (erf), dropout, Linear M→D, dropout (`net.0` and `net.3` hold weights)."""

    def __init__(self, hidden_size: int, mlp_size: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(hidden_size, mlp_size),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_size, hidden_size),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PreNorm(nn.Module):
    """`fn(LayerNorm(x))` with the LayerNorm at `.norm` (eps 1e-5) and the wrapped module at `.fn`."""

    def __init__(self, hidden_size: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class TransformerEncoder(nn.Module):
    """`depth` pre-LN blocks: x + Attention(LN(x)), then x + FeedForward(LN(x))."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        width, dropout = config.hidden_size, config.dropout
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PreNorm(width, Attention(width, config.num_heads, dropout)),
                    PreNorm(width, FeedForward(width, config.mlp_size, dropout)),
                ]
            )
            for _ in range(config.depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attention, feed_forward in self.layers:
            x = x + attention(x)
            x = x + feed_forward(x)
        return x


class MaskPredictor(nn.Module):
    """What every transformer family offers `sample()`, the training objective and the editors.

    A subclass has a `config` with `grid_size`, `num_tokens`, `codebook_size`, `mask_token_id` and
    `num_classes`, and defines `hidden_states(tokens, class_ids, drop_label)` and
    `logits_from_hidden(hidden, *, positions, with_mask_logit)`; `forward` (here, once) chains them,
    returning logits over the K codes (plus [MASK] on request). Families: `MaskTransformer` (v1) and
    `transformer.halton.HaltonTransformer` (v2).
    """

    config: TransformerConfig | HaltonConfig
    # State-dict keys that name the same tensor as another key (alias -> source); our folder format
    # stores such a tensor once, under its source key.
    tied_weights: ClassVar[dict[str, str]] = {}

    def check_inputs(
        self, tokens: torch.Tensor, class_ids: torch.Tensor, drop_label: torch.Tensor | None = None
    ) -> None:
        """Raise ValueError naming what is wrong with a batch of inputs (shape, dtype, value range)."""
        config = self.config
        grid = (config.grid_size, config.grid_size)
        if tokens.dim() != 3 or tuple(tokens.shape[1:]) != grid:
            raise ValueError(f"tokens must have shape (B, {grid[0]}, {grid[1]}), got {tuple(tokens.shape)}")
        if tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"tokens must be an integer tensor, got {tokens.dtype}")
        if class_ids.shape != tokens.shape[:1]:
            raise ValueError(
                f"class_ids must have shape ({tokens.shape[0]},) to match tokens, "
                f"got {tuple(class_ids.shape)}"
            )
        if drop_label is not None and drop_label.shape != tokens.shape[:1]:
            raise ValueError(
                f"drop_label must have shape ({tokens.shape[0]},) to match tokens, "
                f"got {tuple(drop_label.shape)}"
            )
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) > config.mask_token_id):
            raise ValueError(
                f"token ids must be in [0, {config.mask_token_id}] "
                f"(codes, or {config.mask_token_id} = [MASK]); "
                f"got values in [{int(tokens.min())}, {int(tokens.max())}]"
            )
        if class_ids.numel() and (int(class_ids.min()) < 0 or int(class_ids.max()) >= config.num_classes):
            raise ValueError(
                f"class ids must be in [0, {config.num_classes}), got values in "
                f"[{int(class_ids.min())}, {int(class_ids.max())}]"
            )

    def forward(
        self,
        tokens: torch.Tensor,
        class_ids: torch.Tensor,
        drop_label: torch.Tensor | None = None,
        *,
        positions: torch.Tensor | None = None,
        with_mask_logit: bool = False,
    ) -> torch.Tensor:
        """Logits of the codes at each image position.

        Args:
            tokens: LongTensor[B, h, w], codes with masked positions set to `config.mask_token_id`.
            class_ids: LongTensor[B] in [0, num_classes).
            drop_label: BoolTensor[B]; True = unconditional (the null class), for CFG.
            positions: optional BoolTensor[B, N] (or [B, h, w]) selecting the positions to compute
                logits for.
            with_mask_logit: also return the [MASK] logit, giving the reference's [B, N, K + 1].

        Returns:
            FloatTensor[B, N, K] (or [B, N, K + 1]); with `positions`, FloatTensor[M, K (+1)].
        """
        hidden = self.hidden_states(tokens, class_ids, drop_label)
        return self.logits_from_hidden(hidden, positions=positions, with_mask_logit=with_mask_logit)

    @staticmethod
    def flat_positions(positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """BoolTensor[B, N] from a [B, N] or [B, h, w] position mask, checked against hidden [B, N, D]."""
        if positions.dim() == 3:
            positions = positions.flatten(1)  # (B, h, w) -> (B, N)
        if positions.shape != hidden.shape[:2]:
            raise ValueError(
                f"positions must have shape {tuple(hidden.shape[:2])} or (B, h, w), "
                f"got {tuple(positions.shape)}"
            )
        return positions


class MaskTransformer(MaskPredictor):
    """The class-conditional MaskGIT transformer of the valeoai v1 reference.

    Call it as `model(tokens, class_ids, drop_label)` to get logits over the K codes.

    Args:
        config: sizes and vocabulary (see `TransformerConfig`).
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        width, dropout = config.hidden_size, config.dropout
        self.pos_emb = nn.Parameter(torch.empty(1, config.sequence_length, width))
        nn.init.trunc_normal_(self.pos_emb, std=0.02)
        self.bias = nn.Parameter(torch.zeros(config.sequence_length, config.vocab_size))
        self.tok_emb = nn.Embedding(config.vocab_size, width)  # N(0, 1), PyTorch's default, as the reference
        self.first_layer = nn.Sequential(
            nn.LayerNorm(width, eps=1e-12),
            nn.Dropout(dropout),
            nn.Linear(width, width),
            nn.GELU(),
            nn.LayerNorm(width, eps=1e-12),
            nn.Dropout(dropout),
            nn.Linear(width, width),
        )
        self.transformer = TransformerEncoder(config)
        self.last_layer = nn.Sequential(
            nn.LayerNorm(width, eps=1e-12),
            nn.Dropout(dropout),
            nn.Linear(width, width),
            nn.GELU(),
            nn.LayerNorm(width, eps=1e-12),
        )

    def hidden_states(
        self, tokens: torch.Tensor, class_ids: torch.Tensor, drop_label: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Final hidden states of the N image positions (the class position is dropped).

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
        class_token = class_ids.long() + config.first_class_id  # (B,)
        if drop_label is not None:
            class_token = torch.where(drop_label.bool(), config.null_class_id, class_token)
        sequence = torch.cat([tokens.reshape(batch, -1).long(), class_token[:, None]], dim=1)  # (B, S)
        x = self.tok_emb(sequence) + self.pos_emb  # (B, S, D)
        x = self.first_layer(x)
        x = self.transformer(x)  # (B, S, D)
        # The class position's output is never used: drop it before the output MLP.
        return self.last_layer(x[:, : config.num_tokens])  # (B, N, D)

    def logits_from_hidden(
        self, hidden: torch.Tensor, *, positions: torch.Tensor | None = None, with_mask_logit: bool = False
    ) -> torch.Tensor:
        """Tied output head: hidden · tok_embᵀ + bias, over the K codes (plus [MASK] on request).

        Args:
            hidden: FloatTensor[B, N, D] from `hidden_states`.
            positions: optional BoolTensor[B, N] (or [B, h, w]); only these positions get logits.
            with_mask_logit: add the [MASK] column (the reference's 1025-wide output).

        Returns:
            FloatTensor[B, N, W] or, with `positions`, FloatTensor[M, W] for the M selected positions
            in (batch, position) row-major order; W = K (+ 1 with the [MASK] logit).
        """
        config = self.config
        width = config.codebook_size + int(with_mask_logit)
        weight = self.tok_emb.weight[:width]  # (W, D): code rows (and [MASK]) only
        if positions is None:
            return torch.matmul(hidden, weight.t()) + self.bias[: config.num_tokens, :width]  # (B, N, W)
        positions = self.flat_positions(positions, hidden)
        position_index = positions.nonzero()[:, 1]  # (M,)
        selected = hidden[positions]  # (M, D)
        return torch.addmm(
            self.bias[position_index, :width].to(selected.dtype), selected, weight.t().to(selected.dtype)
        )


def unwrap_model(model: nn.Module) -> MaskPredictor:
    """The transformer of any family inside DDP / DeepSpeed (`.module`) and compile (`._orig_mod`) wrappers.

    Raises:
        TypeError: what is inside the wrappers is not a `MaskPredictor` (MaskTransformer, HaltonTransformer).
    """
    inner = unwrap_any_model(model)
    if not isinstance(inner, MaskPredictor):
        raise TypeError(
            f"expected a MaskTransformer or HaltonTransformer (possibly wrapped), got {type(inner).__name__}"
        )
    return inner

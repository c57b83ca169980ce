"""The MaskGIT training objective as a pure function: mask, predict, cross-entropy. No optimizer here.

Follows docs/reference.md#training-recipe. Per sample a mask ratio ρ = f(r), r ~ U(0, 1), from the
shared masking schedule (`transformer.masking.mask_ratio`; the reference always trains with arccos).
Then either

* ``mask_mode="bernoulli"`` (valeoai v1): every token is masked independently with probability ρ, or
* ``mask_mode="exact"`` (paper): exactly ⌈ρ·N⌉ uniformly chosen tokens (at least 1) are masked.

Masked tokens become `mask_token_id`. With probability `label_drop` (0.1) a sample's class is
replaced by the null class, which trains the unconditional half of classifier-free guidance.
The loss is cross-entropy with label smoothing 0.1 and

* ``loss_on="all"`` (valeoai v1): over every position, against the original codes, on the
  reference's 1025-wide logits (codes + [MASK]), so the smoothing mass is spread over 1025 classes;
* ``loss_on="masked"`` (paper / JAX `compute_loss_for_all=False`): over masked positions only, on the
  K code logits; the head is evaluated at those positions only.

`model` may be a wrapper (DeepSpeed engine, DDP, torch.compile) called as
`model(tokens, class_ids, drop_label, **kwargs)`.

Dimensions: B batch, h×w token grid, N = h·w, K codebook size.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from transformer.masking import check_schedule, mask_ratio
from transformer.model import unwrap_model

MASK_MODES = ("bernoulli", "exact")
LOSS_ON = ("all", "masked")


class MaskedTokens(NamedTuple):
    """A masked batch: what the model sees, where the masks are, and the drawn ratios."""

    inputs: torch.Tensor  # LongTensor[B, h, w]: codes, masked positions = mask_token_id
    mask: torch.Tensor  # BoolTensor[B, h, w]: True where masked
    ratio: torch.Tensor  # FloatTensor[B]: drawn mask ratio ρ per sample


class ObjectiveOutput(NamedTuple):
    """Loss (with graph) and detached metrics of one batch."""

    loss: torch.Tensor  # scalar, differentiable
    masked_accuracy: torch.Tensor  # scalar: argmax accuracy on masked tokens (NaN if none masked)
    token_accuracy: torch.Tensor  # scalar: argmax accuracy on all tokens ("all" mode) or masked ones
    mask_ratio: torch.Tensor  # scalar: fraction of tokens actually masked
    num_masked: torch.Tensor  # scalar int: masked tokens in the batch
    drop_fraction: torch.Tensor  # scalar: fraction of samples trained unconditionally


def mask_tokens(
    tokens: torch.Tensor,
    mask_token_id: int,
    *,
    schedule: str = "arccos",
    mode: Literal["bernoulli", "exact"] = "bernoulli",
    generator: torch.Generator | None = None,
) -> MaskedTokens:
    """Draw a per-sample mask ratio from the schedule and mask tokens accordingly.

    Args:
        tokens: LongTensor[B, h, w] of codes.
        mask_token_id: id written at masked positions.
        schedule: masking schedule name (`transformer.masking`).
        mode: "bernoulli" (independent per-token draws, reference) or "exact" (⌈ρ·N⌉ tokens, paper).
        generator: random source on `tokens.device`.

    Returns:
        MaskedTokens(inputs, mask, ratio).
    """
    check_schedule(schedule)
    if mode not in MASK_MODES:
        raise ValueError(f"mask mode must be one of {MASK_MODES}, got {mode!r}")
    if tokens.dim() != 3:
        raise ValueError(f"tokens must have shape (B, h, w), got {tuple(tokens.shape)}")
    batch, num_tokens = tokens.shape[0], tokens[0].numel()
    device = tokens.device
    ratio = mask_ratio(torch.rand(batch, generator=generator, device=device), schedule, num_tokens)  # (B,)
    noise = torch.rand(batch, num_tokens, generator=generator, device=device)  # (B, N)
    if mode == "bernoulli":
        mask = noise < ratio[:, None]  # (B, N)
    else:
        count = torch.ceil(ratio * num_tokens).clamp(1, num_tokens)  # (B,)
        rank = noise.argsort(dim=1).argsort(dim=1)  # (B, N): a uniformly random permutation per sample
        mask = rank < count[:, None]
    mask = mask.view_as(tokens)
    inputs = torch.where(mask, torch.full_like(tokens, mask_token_id), tokens)
    return MaskedTokens(inputs=inputs, mask=mask, ratio=ratio)


def draw_label_drop(
    batch: int,
    probability: float,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """BoolTensor[B]: True (train unconditionally, null class) with `probability` per sample."""
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"label_drop must be in [0, 1], got {probability}")
    return torch.rand(batch, generator=generator, device=device) < probability


def masked_token_loss(
    model: nn.Module,
    tokens: torch.Tensor,
    class_ids: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    schedule: str = "arccos",
    mask_mode: Literal["bernoulli", "exact"] = "bernoulli",
    loss_on: Literal["all", "masked"] = "all",
    label_smoothing: float = 0.1,
    label_drop: float = 0.1,
    mask_token_id: int | None = None,
) -> ObjectiveOutput:
    """Mask a batch, run the model, and return the MaskGIT cross-entropy and its metrics.

    Args:
        model: MaskTransformer or a wrapper of one, called as `model(inputs, class_ids, drop_label, ...)`.
        tokens: LongTensor[B, h, w] of codes (no [MASK]).
        class_ids: LongTensor[B].
        generator: random source for the mask ratios, masks and label drops (on `tokens.device`).
        schedule: training mask-ratio schedule (reference: "arccos").
        mask_mode: "bernoulli" (reference) or "exact" (paper).
        loss_on: "all" (reference, 1025-way) or "masked" (paper, K-way on masked tokens).
        label_smoothing: cross-entropy label smoothing (0.1 in both reference and paper).
        label_drop: probability of training a sample unconditionally (null class) for CFG.
        mask_token_id: [MASK] id; read from the (unwrapped) model's config when not given.

    Returns:
        ObjectiveOutput(loss, masked_accuracy, token_accuracy, mask_ratio, num_masked, drop_fraction).
    """
    if loss_on not in LOSS_ON:
        raise ValueError(f"loss_on must be one of {LOSS_ON}, got {loss_on!r}")
    if mask_token_id is None:
        mask_token_id = unwrap_model(model).config.mask_token_id
    if tokens.numel() and int(tokens.max()) >= mask_token_id:
        raise ValueError(
            f"training tokens must be codes in [0, {mask_token_id}), got max {int(tokens.max())}"
        )
    masked = mask_tokens(tokens, mask_token_id, schedule=schedule, mode=mask_mode, generator=generator)
    drop_label = draw_label_drop(tokens.shape[0], label_drop, generator=generator, device=tokens.device)
    mask = masked.mask.flatten(1)  # (B, N)
    targets = tokens.flatten(1)  # (B, N)

    if loss_on == "all":
        logits = model(masked.inputs, class_ids, drop_label, with_mask_logit=True)  # (B, N, K + 1)
        logits = logits.float()
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), label_smoothing=label_smoothing)
        with torch.no_grad():
            correct = logits.argmax(dim=-1) == targets  # (B, N)
            token_accuracy = correct.float().mean()
            masked_correct = correct[mask]
    else:
        logits = model(masked.inputs, class_ids, drop_label, positions=mask).float()  # (M, K)
        masked_targets = targets[mask]  # (M,)
        if masked_targets.numel():
            loss = F.cross_entropy(logits, masked_targets, label_smoothing=label_smoothing)
        else:
            loss = logits.sum() * 0.0  # nothing masked in the whole batch: a zero loss that keeps the graph
        with torch.no_grad():
            masked_correct = logits.argmax(dim=-1) == masked_targets
            token_accuracy = masked_correct.float().mean()
    return ObjectiveOutput(
        loss=loss,
        masked_accuracy=masked_correct.float().mean(),  # NaN when nothing is masked
        token_accuracy=token_accuracy,
        mask_ratio=mask.float().mean(),
        num_masked=mask.sum(),
        drop_fraction=drop_label.float().mean(),
    )

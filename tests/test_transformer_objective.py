"""The training objective: masks as the reference (Bernoulli) and the paper (exact count), the loss,
and where gradients flow."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transformer import MaskTransformer, TransformerConfig, mask_tokens, masked_token_loss
from transformer.objective import draw_label_drop

CONFIG = TransformerConfig(
    codebook_size=32,
    grid_size=4,
    num_classes=6,
    hidden_size=32,
    depth=2,
    num_heads=4,
    mlp_size=64,
    dropout=0.0,
)


def codes(batch: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(
        0, CONFIG.codebook_size, (batch, CONFIG.grid_size, CONFIG.grid_size), generator=generator
    )


def test_exact_mode_masks_the_paper_count_per_sample():
    tokens = codes(64)
    masked = mask_tokens(
        tokens, CONFIG.mask_token_id, mode="exact", generator=torch.Generator().manual_seed(1)
    )
    per_sample = masked.mask.flatten(1).sum(dim=1)
    expected = torch.ceil(masked.ratio * CONFIG.num_tokens).clamp(1, CONFIG.num_tokens)
    assert torch.equal(per_sample, expected.long())
    assert torch.equal(
        masked.inputs[masked.mask], torch.full_like(masked.inputs[masked.mask], CONFIG.mask_token_id)
    )
    assert torch.equal(masked.inputs[~masked.mask], tokens[~masked.mask])


def test_bernoulli_mode_masks_the_arccos_fraction_on_average():
    # Reference masking: E[fraction] = E[arccos(r)/(π/2)] = 2/π.
    tokens = torch.zeros(4000, 16, 16, dtype=torch.long)
    masked = mask_tokens(tokens, 1024, generator=torch.Generator().manual_seed(2))
    assert abs(masked.mask.float().mean().item() - 2 / math.pi) < 0.02
    # Per sample, the realised fraction tracks that sample's ratio (independent tokens, N = 256).
    realised = masked.mask.flatten(1).float().mean(dim=1)
    assert (realised - masked.ratio).abs().mean() < 0.05


def test_the_same_generator_seed_reproduces_masks():
    tokens = codes(8)
    first = mask_tokens(tokens, CONFIG.mask_token_id, generator=torch.Generator().manual_seed(3))
    second = mask_tokens(tokens, CONFIG.mask_token_id, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first.mask, second.mask)


def test_label_drop_rate():
    drops = draw_label_drop(100_000, 0.1, generator=torch.Generator().manual_seed(4))
    assert abs(drops.float().mean().item() - 0.1) < 0.005
    with pytest.raises(ValueError, match="label_drop"):
        draw_label_drop(4, 1.5)


class Recorder(nn.Module):
    """A DeepSpeed-engine-like wrapper (`.module`) that remembers what the objective fed the model."""

    def __init__(self, module: MaskTransformer) -> None:
        super().__init__()
        self.module = module
        self.seen: dict = {}

    def forward(self, tokens, class_ids, drop_label=None, **kwargs):
        self.seen = {"tokens": tokens, "drop_label": drop_label, **kwargs}
        return self.module(tokens, class_ids, drop_label, **kwargs)


@pytest.mark.parametrize("loss_on", ["all", "masked"])
def test_loss_is_label_smoothed_cross_entropy_on_the_right_tokens(loss_on):
    torch.manual_seed(0)
    model = Recorder(MaskTransformer(CONFIG))
    tokens, class_ids = codes(6, seed=5), torch.arange(6) % CONFIG.num_classes
    out = masked_token_loss(
        model, tokens, class_ids, loss_on=loss_on, generator=torch.Generator().manual_seed(6)
    )
    seen = model.seen
    mask = seen["tokens"] == CONFIG.mask_token_id
    assert torch.equal(seen["tokens"][~mask], tokens[~mask])
    with torch.no_grad():
        logits = model.module(
            seen["tokens"], class_ids, seen["drop_label"], with_mask_logit=True
        )  # (B, N, K+1)
    if loss_on == "all":
        expected = F.cross_entropy(logits.flatten(0, 1), tokens.flatten(), label_smoothing=0.1)
    else:
        expected = F.cross_entropy(logits[..., :-1][mask.flatten(1)], tokens[mask], label_smoothing=0.1)
    torch.testing.assert_close(out.loss.detach(), expected, rtol=1e-5, atol=1e-5)
    accuracy = (
        (logits[..., : CONFIG.codebook_size].argmax(-1) == tokens.flatten(1))[mask.flatten(1)].float().mean()
    )
    torch.testing.assert_close(out.masked_accuracy, accuracy)
    assert out.num_masked == mask.sum()


def test_gradients_flow_only_where_the_loss_looks():
    torch.manual_seed(1)
    n, k = CONFIG.num_tokens, CONFIG.codebook_size
    for loss_on in ("masked", "all"):
        model = Recorder(MaskTransformer(CONFIG))
        tokens, class_ids = codes(4, seed=7), torch.tensor([0, 1, 1, 2])
        out = masked_token_loss(
            model,
            tokens,
            class_ids,
            loss_on=loss_on,
            label_drop=0.0,
            generator=torch.Generator().manual_seed(8),
        )
        out.loss.backward()
        inner = model.module
        mask = (model.seen["tokens"] == CONFIG.mask_token_id).flatten(1)  # (B, N)
        assert 0 < int(mask.sum()) < mask.numel()
        bias_grad = inner.bias.grad.abs()  # (N + 1, V)
        rows_with_gradient = bias_grad[:n, :k].sum(dim=1) > 0  # (N,)
        if loss_on == "masked":
            # Only positions masked in some sample receive gradient through the per-position bias.
            assert torch.equal(rows_with_gradient, mask.any(dim=0))
            assert bias_grad[:, k].sum() == 0  # the [MASK] logit is not part of the paper loss
        else:
            assert rows_with_gradient.all()
            assert bias_grad[:n, k].sum() > 0  # the reference's 1025-way loss includes [MASK]
        assert bias_grad[n].sum() == 0  # the class position has no output
        assert bias_grad[:, k + 1 :].sum() == 0  # class and null-class entries are never predicted
        # Input embeddings of classes absent from the batch (3, 4, 5) and of the null class get nothing.
        class_rows = inner.tok_emb.weight.grad[CONFIG.first_class_id :]
        assert [bool(row.abs().sum() > 0) for row in class_rows] == [
            True,
            True,
            True,
            False,
            False,
            False,
            False,
        ]


def test_dropped_labels_feed_the_null_class():
    model = Recorder(MaskTransformer(CONFIG))
    out = masked_token_loss(model, codes(8), torch.zeros(8, dtype=torch.long), label_drop=1.0)
    assert model.seen["drop_label"].all() and out.drop_fraction == 1.0
    masked_token_loss(model, codes(8), torch.zeros(8, dtype=torch.long), label_drop=0.0)
    assert not model.seen["drop_label"].any()


def test_a_few_steps_of_training_lower_the_loss():
    torch.manual_seed(2)
    model = MaskTransformer(CONFIG)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    # A learnable pattern: each class has its own fixed grid.
    patterns = codes(CONFIG.num_classes, seed=9)
    class_ids = torch.arange(36) % CONFIG.num_classes
    tokens = patterns[class_ids]
    generator = torch.Generator().manual_seed(10)
    losses = []
    for _ in range(40):
        out = masked_token_loss(
            model, tokens, class_ids, loss_on="masked", mask_mode="exact", generator=generator
        )
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert out.masked_accuracy > 3 / CONFIG.codebook_size  # well above guessing among K codes


def test_bad_arguments_are_named():
    model = MaskTransformer(CONFIG)
    tokens = codes(2)
    with pytest.raises(ValueError, match="loss_on"):
        masked_token_loss(model, tokens, torch.zeros(2, dtype=torch.long), loss_on="some")
    with pytest.raises(ValueError, match="mask mode"):
        masked_token_loss(model, tokens, torch.zeros(2, dtype=torch.long), mask_mode="ceil")
    with pytest.raises(ValueError, match="training tokens must be codes"):
        masked_token_loss(model, tokens.fill_(CONFIG.mask_token_id), torch.zeros(2, dtype=torch.long))

"""Token-level editing: inpainting keeps known tokens, outpainting extends grids, the JAX demo's box
widening (class-guided editing through `MaskGIT.inpaint` is tested in test_generation.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from transformer import (
    MaskTransformer,
    TokenBox,
    TransformerConfig,
    inpaint,
    latent_box,
    outpaint,
)

CONFIG = TransformerConfig(
    codebook_size=40, grid_size=6, num_classes=4, hidden_size=32, depth=2, num_heads=4, mlp_size=64
)


@pytest.fixture(scope="module")
def model() -> MaskTransformer:
    torch.manual_seed(0)
    return MaskTransformer(CONFIG).eval()


def grids(batch: int, seed: int = 0, width: int = 6) -> torch.Tensor:
    return torch.randint(
        0, CONFIG.codebook_size, (batch, 6, width), generator=torch.Generator().manual_seed(seed)
    )


class Counting(nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module = module
        self.calls = 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.module(*args, **kwargs)


def test_inpainting_never_changes_known_tokens(model):
    tokens = grids(4)
    region = torch.rand(4, 6, 6, generator=torch.Generator().manual_seed(1)) < 0.4
    result = inpaint(model, tokens, region, [0, 1, 2, 3], seeds=[0, 1, 2, 3], steps=5)
    assert torch.equal(result.tokens[~region], tokens[~region])
    assert torch.equal(result.region, region)
    assert int(result.tokens.max()) < CONFIG.codebook_size
    # The region really is regenerated (a fresh model almost never reproduces 40-way random codes).
    assert (result.tokens[region] != tokens[region]).float().mean() > 0.5
    # One 2-D region applies to the whole batch.
    shared = torch.zeros(6, 6, dtype=torch.bool)
    shared[2:4, :] = True
    again = inpaint(model, tokens, shared, [0, 1, 2, 3], seeds=[0, 1, 2, 3])
    assert torch.equal(again.tokens[:, ~shared], tokens[:, ~shared])


def test_inpainting_a_small_region_still_takes_all_steps(model):
    counting = Counting(model)
    region = torch.zeros(1, 6, 6, dtype=torch.bool)
    region[0, 0, :4] = True  # 4 tokens, 4 steps: one per step
    inpaint(counting, grids(1), region, [2], steps=4, seeds=[0], cfg_weight=0.0)
    assert counting.calls == 4


def test_inpainting_returns_the_trace_when_asked(model):
    region = torch.zeros(2, 6, 6, dtype=torch.bool)
    region[:, 1:4, 1:5] = True
    result = inpaint(model, grids(2), region, [0, 1], seeds=[0, 1], steps=3, return_trace=True)
    assert result.trace is not None and result.trace.predictions.shape == (3, 2, 6, 6)
    assert torch.equal(result.trace.predictions[-1], result.tokens)
    assert inpaint(model, grids(2), region, [0, 1], seeds=[0, 1], steps=3).trace is None


def test_latent_box_follows_the_jax_demo():
    # 512 px image, f = 16, L = 32: rows max(0, 100//16 − 1) = 5 … min(32, 6 + 150//16 + 1) = 16.
    assert latent_box(100, 200, 150, 90, downsample=16, grid_size=32) == TokenBox(5, 11, 16, 18)
    # Clipped at the borders.
    assert latent_box(0, 0, 512, 512, downsample=16, grid_size=32) == TokenBox(0, 0, 32, 32)
    assert latent_box(0, 0, 16, 16, downsample=16, grid_size=32, margin=0) == TokenBox(0, 0, 1, 1)
    with pytest.raises(ValueError, match="outside"):
        latent_box(600, 0, 16, 16, downsample=16, grid_size=32)
    with pytest.raises(ValueError, match="height, width >= 1"):
        latent_box(0, 0, 0, 16, downsample=16, grid_size=32)


@pytest.mark.parametrize("direction", ["right", "left", "down", "up"])
def test_outpainting_extends_and_keeps_the_original(model, direction):
    tokens = grids(2, seed=5)
    result = outpaint(model, tokens, [1, 2], extend=7, direction=direction, seeds=[3, 4], steps=4)
    horizontal = direction in ("right", "left")
    assert result.tokens.shape == ((2, 6, 13) if horizontal else (2, 13, 6))
    axis = 2 if horizontal else 1
    kept = result.tokens.narrow(axis, 0 if direction in ("right", "down") else 7, 6)
    assert torch.equal(kept, tokens)
    assert int(result.region.sum()) == 2 * 7 * 6
    assert torch.equal(
        result.region.narrow(axis, 0 if direction in ("right", "down") else 7, 6).any(), torch.tensor(False)
    )
    assert int(result.tokens.max()) < CONFIG.codebook_size


def test_outpainting_is_seeded_per_sample(model):
    tokens = grids(3, seed=6)
    batched = outpaint(model, tokens, [0, 1, 2], extend=5, seeds=[7, 8, 9], steps=3).tokens
    alone = outpaint(model, tokens[1:2], [1], extend=5, seeds=[8], steps=3).tokens
    assert torch.equal(batched[1], alone[0])
    # A panorama: extending a wider canvas again works from its last columns.
    wider = outpaint(model, batched, [0, 1, 2], extend=4, chunk=2, seeds=[1, 2, 3], steps=3).tokens
    assert wider.shape == (3, 6, 15) and torch.equal(wider[:, :, :11], batched)


def test_editing_bad_input_is_named(model):
    with pytest.raises(ValueError, match="region must have shape"):
        inpaint(model, grids(2), torch.zeros(2, 5, 5, dtype=torch.bool), [0, 1])
    with pytest.raises(ValueError, match="boolean"):
        inpaint(model, grids(2), torch.zeros(2, 6, 6), [0, 1])
    with pytest.raises(ValueError, match="codes in"):
        inpaint(model, grids(1).fill_(CONFIG.mask_token_id), torch.zeros(6, 6, dtype=torch.bool), [0])
    with pytest.raises(ValueError, match="init_tokens must have shape"):
        inpaint(model, grids(1, width=8), torch.zeros(1, 6, 8, dtype=torch.bool), [0])
    with pytest.raises(ValueError, match="6 rows"):
        outpaint(model, torch.zeros(1, 5, 6, dtype=torch.long), [0], extend=2)
    with pytest.raises(ValueError, match="direction"):
        outpaint(model, grids(1), [0], extend=2, direction="sideways")
    with pytest.raises(ValueError, match="extend"):
        outpaint(model, grids(1), [0], extend=0)
    with pytest.raises(ValueError, match="chunk"):
        outpaint(model, grids(1), [0], extend=2, chunk=6)

"""MaskTransformer: the reference's parameter layout, its forward pass, and the head's shortcuts.

The parity test re-states the reference forward pass independently (docs/reference.md#transformer) with
`nn.MultiheadAttention` and plain `nn.Sequential` blocks, loads *our* state dict into it strictly,
and compares logits.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from transformer import PRESETS, MaskTransformer, TransformerConfig

SMALL = TransformerConfig(
    codebook_size=40, grid_size=4, num_classes=7, hidden_size=48, depth=3, num_heads=4, mlp_size=96
)


class ReferenceStatement(nn.Module):
    """The valeoai v1 MaskTransformer as docs/reference.md#transformer states it, written apart from ours."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        d, v, s = config.hidden_size, config.vocab_size, config.num_tokens + 1
        self.config = config
        self.pos_emb = nn.Parameter(torch.zeros(1, s, d))
        self.bias = nn.Parameter(torch.zeros(s, v))
        self.tok_emb = nn.Embedding(v, d)
        self.first_layer = nn.Sequential(
            nn.LayerNorm(d, eps=1e-12),
            nn.Dropout(0.1),
            nn.Linear(d, d),
            nn.GELU(),
            nn.LayerNorm(d, eps=1e-12),
            nn.Dropout(0.1),
            nn.Linear(d, d),
        )
        layers = []
        for _ in range(config.depth):
            attention = nn.Module()
            attention.norm = nn.LayerNorm(d)
            attention.fn = nn.Module()
            attention.fn.mha = nn.MultiheadAttention(d, config.num_heads, dropout=0.1, batch_first=True)
            feed_forward = nn.Module()
            feed_forward.norm = nn.LayerNorm(d)
            feed_forward.fn = nn.Module()
            feed_forward.fn.net = nn.Sequential(
                nn.Linear(d, config.mlp_size),
                nn.GELU(),
                nn.Dropout(0.1),
                nn.Linear(config.mlp_size, d),
                nn.Dropout(0.1),
            )
            layers.append(nn.ModuleList([attention, feed_forward]))
        self.transformer = nn.Module()
        self.transformer.layers = nn.ModuleList(layers)
        self.last_layer = nn.Sequential(
            nn.LayerNorm(d, eps=1e-12),
            nn.Dropout(0.1),
            nn.Linear(d, d),
            nn.GELU(),
            nn.LayerNorm(d, eps=1e-12),
        )

    def forward(self, codes, labels, drop_label):
        k, n = self.config.codebook_size, self.config.num_tokens
        label_token = torch.where(drop_label, self.config.vocab_size - 1, labels + k + 1)
        ids = torch.cat([codes.view(codes.shape[0], -1), label_token.view(-1, 1)], dim=1)
        x = self.first_layer(self.tok_emb(ids) + self.pos_emb)
        for attention, feed_forward in self.transformer.layers:
            h = attention.norm(x)
            x = x + attention.fn.mha(h, h, h, need_weights=False)[0]
            x = x + feed_forward.fn.net(feed_forward.norm(x))
        x = self.last_layer(x)
        logits = torch.matmul(x, self.tok_emb.weight.T) + self.bias
        return logits[:, :n, : k + 1]


def random_inputs(config: TransformerConfig, batch: int, generator: torch.Generator):
    tokens = torch.randint(
        0, config.codebook_size, (batch, config.grid_size, config.grid_size), generator=generator
    )
    masked = torch.rand(tokens.shape, generator=generator) < 0.5
    tokens[masked] = config.mask_token_id
    class_ids = torch.randint(0, config.num_classes, (batch,), generator=generator)
    return tokens, class_ids


def randomised_model(config: TransformerConfig, seed: int = 0) -> MaskTransformer:
    """A model whose zero-initialised parameters (bias, in_proj_bias) are also random, so they are tested."""
    torch.manual_seed(seed)
    model = MaskTransformer(config)
    with torch.no_grad():
        model.bias.normal_(0, 0.5)
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0, 0.1)
    return model.eval()


def test_released_sizes_have_the_reference_keys_shapes_and_parameter_counts():
    for name, grid, expected_parameters in (
        ("maskgit-imagenet256", 16, 174_160_874),
        ("maskgit-imagenet512", 32, 176_306_666),
    ):
        with torch.device("meta"):
            model = MaskTransformer(PRESETS[name])
        shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
        assert len(shapes) == 305
        assert sum(p.numel() for p in model.parameters()) == expected_parameters
        sequence = grid * grid + 1
        assert list(shapes)[:3] == ["pos_emb", "bias", "tok_emb.weight"]
        assert shapes["pos_emb"] == (1, sequence, 768)
        assert shapes["bias"] == (sequence, 2026)
        assert shapes["tok_emb.weight"] == (2026, 768)
        for i in (0, 23):
            layer = f"transformer.layers.{i}"
            assert shapes[f"{layer}.0.norm.weight"] == (768,)
            assert shapes[f"{layer}.0.fn.mha.in_proj_weight"] == (2304, 768)
            assert shapes[f"{layer}.0.fn.mha.in_proj_bias"] == (2304,)
            assert shapes[f"{layer}.0.fn.mha.out_proj.weight"] == (768, 768)
            assert shapes[f"{layer}.1.fn.net.0.weight"] == (3072, 768)
            assert shapes[f"{layer}.1.fn.net.3.weight"] == (768, 3072)
        for key in ("first_layer.0.weight", "first_layer.4.bias", "last_layer.0.weight", "last_layer.4.bias"):
            assert shapes[key] == (768,)
        for key in ("first_layer.2.weight", "first_layer.6.weight", "last_layer.2.weight"):
            assert shapes[key] == (768, 768)
        assert "transformer.layers.24.0.norm.weight" not in shapes


def test_vocabulary_layout_is_derived_from_the_config():
    config = PRESETS["maskgit-imagenet256"]
    assert (config.mask_token_id, config.first_class_id, config.null_class_id, config.vocab_size) == (
        1024,
        1025,
        2025,
        2026,
    )
    assert config.num_tokens == 256
    assert PRESETS["maskgit-imagenet512"].num_tokens == 1024


def test_logits_equal_an_independent_statement_of_the_reference_forward():
    model = randomised_model(SMALL)
    reference = ReferenceStatement(SMALL).eval()
    reference.load_state_dict(model.state_dict(), strict=True)  # same key names and shapes
    generator = torch_generator(1)
    tokens, class_ids = random_inputs(SMALL, 5, generator)
    drop_label = torch.tensor([False, True, False, True, False])
    with torch.no_grad():
        ours = model(tokens, class_ids, drop_label, with_mask_logit=True)
        theirs = reference(tokens, class_ids, drop_label)
        codes_only = model(tokens, class_ids, drop_label)
    assert ours.shape == (5, SMALL.num_tokens, SMALL.codebook_size + 1)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(codes_only, theirs[..., : SMALL.codebook_size], rtol=1e-5, atol=1e-4)
    # The null class really changes the output (the class token is read, and the drop flag matters).
    with torch.no_grad():
        conditional = model(tokens, class_ids, torch.zeros(5, dtype=torch.bool))
    assert not torch.allclose(conditional[1], codes_only[1])
    torch.testing.assert_close(conditional[0], codes_only[0])


def torch_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_selected_positions_give_the_same_logits_as_the_full_head():
    model = randomised_model(SMALL, seed=3)
    tokens, class_ids = random_inputs(SMALL, 3, torch_generator(2))
    positions = tokens == SMALL.mask_token_id
    with torch.no_grad():
        full = model(tokens, class_ids, with_mask_logit=True)
        selected = model(tokens, class_ids, positions=positions, with_mask_logit=True)
        selected_flat = model(tokens, class_ids, positions=positions.flatten(1))
    assert selected.shape == (int(positions.sum()), SMALL.codebook_size + 1)
    torch.testing.assert_close(selected, full[positions.flatten(1)], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(selected_flat, selected[:, : SMALL.codebook_size])


def test_bf16_autocast_stays_close_to_fp32():
    model = randomised_model(SMALL, seed=4)
    tokens, class_ids = random_inputs(SMALL, 4, torch_generator(5))
    with torch.no_grad():
        exact = model(tokens, class_ids)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(tokens, class_ids)
    relative = (low.float() - exact).norm() / exact.norm()
    assert relative < 0.05


def test_dropout_is_active_in_training_and_off_in_eval():
    config = TransformerConfig(**{**SMALL.to_dict(), "dropout": 0.5})
    model = MaskTransformer(config)
    tokens, class_ids = random_inputs(config, 2, torch_generator(6))
    model.train()
    assert not torch.allclose(model(tokens, class_ids), model(tokens, class_ids))
    model.eval()
    torch.testing.assert_close(model(tokens, class_ids), model(tokens, class_ids))


def test_gradients_reach_every_parameter_used():
    model = MaskTransformer(SMALL).train()
    tokens, class_ids = random_inputs(SMALL, 2, torch_generator(7))
    model(tokens, class_ids, torch.tensor([False, True]), with_mask_logit=True).square().mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.parametrize(
    ("tokens_shape", "class_ids", "token_value", "message"),
    [
        ((2, 4, 4), [0, 7], 0, "class ids must be in"),
        ((2, 4, 4), [0, -1], 0, "class ids must be in"),
        ((2, 5, 5), [0, 1], 0, "tokens must have shape"),
        ((2, 16), [0, 1], 0, "tokens must have shape"),
        ((2, 4, 4), [0, 1], 41, "token ids must be in"),
        ((2, 4, 4), [0, 1, 2], 0, "class_ids must have shape"),
    ],
)
def test_bad_inputs_are_named(tokens_shape, class_ids, token_value, message):
    model = MaskTransformer(SMALL).eval()
    tokens = torch.full(tokens_shape, token_value, dtype=torch.long)
    with pytest.raises(ValueError, match=message):
        model(tokens, torch.tensor(class_ids))


def test_config_rejects_inconsistent_sizes():
    with pytest.raises(ValueError, match="divisible"):
        TransformerConfig(hidden_size=100, num_heads=16)
    with pytest.raises(ValueError, match="unknown TransformerConfig field"):
        TransformerConfig.from_dict({**SMALL.to_dict(), "n_layer": 3})
    assert TransformerConfig.from_dict(SMALL.to_dict()) == SMALL

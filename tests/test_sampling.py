"""sample(): the reference decoding loop with its defects fixed, checked on real forward passes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from transformer import MaskTransformer, SamplingConfig, TransformerConfig, sample, tokens_per_step

CONFIG = TransformerConfig(
    codebook_size=48, grid_size=4, num_classes=5, hidden_size=32, depth=2, num_heads=4, mlp_size=64
)


@pytest.fixture(scope="module")
def model() -> MaskTransformer:
    torch.manual_seed(0)
    model = MaskTransformer(CONFIG)
    with torch.no_grad():
        model.bias.normal_(0, 2.0)  # sharper, position-dependent distributions than a fresh model's
    return model.eval()


class Counting(nn.Module):
    """Wraps the model like an engine (`.module`) and records every forward call."""

    def __init__(self, module: nn.Module, *, ignore_drop_label: bool = False) -> None:
        super().__init__()
        self.module = module
        self.ignore_drop_label = ignore_drop_label
        self.calls: list[dict] = []

    def forward(self, tokens, class_ids, drop_label=None, **kwargs):
        self.calls.append(
            {"batch": tokens.shape[0], "drop_label": drop_label.clone(), "tokens": tokens.clone()}
        )
        if not self.ignore_drop_label:
            return self.module(tokens, class_ids, drop_label, **kwargs)
        # Unconditional = conditional, each half run as its own B-sized forward so that the numbers
        # are bit-identical to a conditional-only forward.
        positions = kwargs.pop("positions")
        halves = [
            self.module(t, c, None, positions=p, **kwargs)
            for t, c, p in zip(
                tokens.chunk(2) if len(tokens) > 1 else [tokens], class_ids.chunk(2), positions.chunk(2)
            )
        ]
        return torch.cat(halves)


@pytest.mark.parametrize("schedule", ["arccos", "cosine", "linear", "square", "root", "jax-cosine"])
@pytest.mark.parametrize("steps", [1, 3, 8])
def test_every_token_is_a_code_after_sampling(model, schedule, steps):
    result = sample(model, [0, 1, 4], steps=steps, schedule=schedule, seeds=[0, 1, 2])
    assert result.tokens.shape == (3, 4, 4)
    assert result.tokens.dtype == torch.long
    assert int(result.tokens.min()) >= 0 and int(result.tokens.max()) < CONFIG.codebook_size


def test_exactly_steps_forward_passes_with_cfg_halves_batched(model):
    counting = Counting(model)
    sample(counting, [0, 1, 2], steps=6, cfg_weight=3.0, cfg_schedule="linear", seeds=[0, 1, 2])
    assert len(counting.calls) == 6
    # Step 0 has guidance weight 0 (linear ramp): its unconditional half would be thrown away: skipped.
    assert counting.calls[0]["batch"] == 3 and not counting.calls[0]["drop_label"].any()
    for call in counting.calls[1:]:
        assert call["batch"] == 6
        assert call["drop_label"].tolist() == [False] * 3 + [True] * 3
        assert torch.equal(call["tokens"][:3], call["tokens"][3:])

    counting = Counting(model)
    sample(counting, [0, 1, 2], steps=5, cfg_weight=2.0, cfg_schedule="constant", seeds=[0, 1, 2])
    assert [call["batch"] for call in counting.calls] == [6] * 5

    counting = Counting(model)
    sample(counting, [0, 1, 2], steps=7, cfg_weight=0.0, seeds=[0, 1, 2])
    assert [call["batch"] for call in counting.calls] == [3] * 7
    assert not any(call["drop_label"].any() for call in counting.calls)


def test_trace_follows_the_schedule_and_never_remasks(model):
    result = sample(model, [3, 3], steps=8, seeds=[5, 6], return_trace=True)
    trace = result.trace
    expected = tokens_per_step(CONFIG.num_tokens, 8, "arccos")
    assert trace.revealed.tolist() == [[count, count] for count in expected]
    final = result.tokens
    still_masked = torch.ones(2, 4, 4, dtype=torch.bool)
    for predictions, masked_after in zip(trace.predictions, trace.masks):
        assert not (masked_after & ~still_masked).any()  # nothing is ever re-masked
        # Tokens decided before or at this step already hold their final value: never changed later.
        assert torch.equal(predictions[~masked_after], final[~masked_after])
        still_masked = masked_after
    assert not trace.masks[-1].any()
    assert torch.equal(trace.predictions[-1], result.tokens)


def test_seeded_sampling_is_reproducible(model):
    first = sample(model, [0, 1, 2, 3], seeds=[10, 11, 12, 13]).tokens
    again = sample(model, [0, 1, 2, 3], seeds=[10, 11, 12, 13]).tokens
    other = sample(model, [0, 1, 2, 3], seeds=[20, 21, 22, 23]).tokens
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    via_generator = sample(model, [0, 1], generator=torch.Generator().manual_seed(3)).tokens
    assert torch.equal(
        via_generator, sample(model, [0, 1], generator=torch.Generator().manual_seed(3)).tokens
    )


@pytest.mark.parametrize("cfg_weight", [0.0, 3.0])
def test_a_sample_does_not_depend_on_its_batch(model, cfg_weight):
    classes, seeds = [4, 0, 2, 2, 1], [7, 8, 9, 10, 11]
    batched = sample(model, classes, seeds=seeds, cfg_weight=cfg_weight).tokens
    for i in range(len(classes)):
        alone = sample(model, [classes[i]], seeds=[seeds[i]], cfg_weight=cfg_weight).tokens
        assert torch.equal(alone[0], batched[i]), f"sample {i} changed when batched"
    # Reordering the batch reorders the results.
    reordered = sample(model, classes[::-1], seeds=seeds[::-1], cfg_weight=cfg_weight).tokens
    assert torch.equal(reordered, batched.flip(0))


def test_cfg_weight_zero_is_the_conditional_path(model):
    conditional = sample(model, [0, 1, 2], seeds=[1, 2, 3], cfg_weight=0.0).tokens
    # With unconditional logits equal to conditional ones, any guidance weight must give the same tokens.
    guided_without_effect = sample(
        Counting(model, ignore_drop_label=True),
        [0, 1, 2],
        seeds=[1, 2, 3],
        cfg_weight=5.0,
        cfg_schedule="constant",
    ).tokens
    assert torch.equal(conditional, guided_without_effect)
    # And real guidance changes the result (the null class is really used).
    guided = sample(model, [0, 1, 2], seeds=[1, 2, 3], cfg_weight=5.0, cfg_schedule="constant").tokens
    assert not torch.equal(conditional, guided)


def test_temperature_divides_logits(model):
    # One step without Gumbel noise: a near-zero temperature is argmax decoding of the model's logits.
    result = sample(
        model, [1, 2], steps=1, temperature=1e-4, gumbel_temperature=0.0, cfg_weight=0.0, seeds=[0, 1]
    )
    masked = torch.full((2, 4, 4), CONFIG.mask_token_id)
    with torch.no_grad():
        logits = model(masked, torch.tensor([1, 2]))  # (2, N, K)
    assert torch.equal(result.tokens.flatten(1), logits.argmax(dim=-1))
    # A high temperature spreads the choices: many different codes at the same position over seeds.
    hot = sample(
        model, [1] * 64, steps=1, temperature=50.0, gumbel_temperature=0.0, cfg_weight=0.0, seeds=range(64)
    )
    assert len(set(hot.tokens[:, 0, 0].tolist())) > 10


def test_mask_is_never_sampled_even_when_the_model_prefers_it(model):
    loud = MaskTransformer(CONFIG).eval()
    loud.load_state_dict(model.state_dict())
    with torch.no_grad():
        loud.bias[:, CONFIG.mask_token_id] = (
            1e4  # the reference's 1025-wide softmax would pick [MASK] everywhere
        )
    tokens = sample(loud, [0, 1], seeds=[0, 1]).tokens
    assert int(tokens.max()) < CONFIG.codebook_size


def test_partially_known_grids_keep_their_tokens_and_get_their_own_schedule(model):
    known = torch.randint(0, CONFIG.codebook_size, (2, 4, 4), generator=torch.Generator().manual_seed(4))
    init = known.clone()
    init[0, 1:3, 1:3] = CONFIG.mask_token_id  # 4 masked tokens
    init[1] = CONFIG.mask_token_id  # 16 masked tokens
    result = sample(model, [0, 1], steps=4, init_tokens=init, seeds=[0, 1], return_trace=True)
    keep = init != CONFIG.mask_token_id
    assert torch.equal(result.tokens[keep], known[keep])
    assert result.trace.revealed[:, 0].tolist() == tokens_per_step(4, 4, "arccos")
    assert result.trace.revealed[:, 1].tolist() == tokens_per_step(16, 4, "arccos")


def test_progress_callback_and_training_flag(model):
    seen = []
    model.train()
    try:
        sample(model, [0], steps=5, seeds=[0], progress=lambda done, total: seen.append((done, total)))
        assert model.training  # restored
    finally:
        model.eval()
    assert seen == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]


def test_sampling_config_kwargs_drive_sample(model):
    config = SamplingConfig(
        steps=3, schedule="cosine", temperature=0.5, gumbel_temperature=1.0, cfg_weight=1.0
    )
    counting = Counting(model)
    sample(counting, [0], seeds=[0], **config.as_kwargs())
    assert len(counting.calls) == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"class_ids": [0, 5]}, "class ids must be in"),
        ({"class_ids": [-1]}, "class ids must be in"),
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"steps": 2.5}, "steps must be an integer >= 1"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"temperature": -1.0}, "temperature must be > 0"),
        ({"gumbel_temperature": -0.1}, "gumbel_temperature"),
        ({"cfg_weight": -1.0}, "cfg_weight"),
        ({"cfg_schedule": "cosine"}, "cfg_schedule"),
        ({"schedule": "cosin"}, "unknown masking schedule"),
        ({"init_tokens": torch.zeros(1, 8, 8, dtype=torch.long)}, r"init_tokens must have shape \(1, 4, 4\)"),
        ({"init_tokens": torch.full((1, 4, 4), 99)}, "init_tokens must hold codes"),
        ({"seeds": [1, 2]}, "one entry per sample"),
        ({"start_step": 8}, "start_step"),
    ],
)
def test_bad_input_is_named(model, kwargs, message):
    arguments = {"class_ids": [0], **kwargs}
    class_ids = arguments.pop("class_ids")
    with pytest.raises(ValueError, match=message):
        sample(model, class_ids, **arguments)


def test_seeds_are_bounded_by_max_seed(model):
    from generation.maskgit import draw_seeds
    from transformer import MAX_SEED

    assert MAX_SEED == 2**53  # one bound for sample(), the CLI and the HTTP API (JSON-safe)
    last = sample(model, [0], seeds=[MAX_SEED - 1], steps=2).tokens
    assert last.shape == (1, 4, 4)
    for seed in (MAX_SEED, -1):
        with pytest.raises(ValueError, match=r"a seed must be an integer in \[0, 2\*\*53"):
            sample(model, [0], seeds=[seed], steps=2)
    drawn = draw_seeds(3, None)  # drawn seeds can be sent back through the CLI or the HTTP API
    assert min(drawn) >= 0 and max(drawn) < MAX_SEED and list(drawn) == list(range(drawn[0], drawn[0] + 3))

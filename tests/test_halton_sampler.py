"""The v2 sampler options of the one `sample()`: Halton order and step table, temperature knobs, presets.

Expected orders and counts are the reference's (docs/reference.md#halton-sampler) and small cases
worked out by hand from its definition.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from transformer.config import HALTON_PRESETS, PRESETS, SAMPLING_PRESETS, HaltonConfig, SamplingConfig
from transformer.halton import HaltonTransformer
from transformer.halton_order import halton_cells, halton_order, radical_inverse
from transformer.masking import tokens_per_step
from transformer.model import MaskTransformer
from transformer.sample import sample


def halton_tokens_per_step(num_tokens: int, steps: int, *, start_step: int = 0) -> list[int]:
    """The v2 Halton sampler's step table, which is the schedule "halton"."""
    return tokens_per_step(num_tokens, steps, "halton", start_step=start_step)


@pytest.fixture(scope="module", params=["maskgit", "halton"])
def model(request) -> torch.nn.Module:
    torch.manual_seed(0)
    if request.param == "maskgit":
        return MaskTransformer(PRESETS["tiny"]).eval()
    model = HaltonTransformer(HALTON_PRESETS["halton-tiny"]).eval()
    with torch.no_grad():
        for block in model.transformer.layers:  # leave adaLN-zero's identity start
            block.mlp[1].weight.normal_(std=0.05)
    return model


# --- the order -------------------------------------------------------------------------------------


def test_van_der_corput_sequences():
    assert [radical_inverse(i, 2) for i in range(1, 5)] == [1 / 2, 1 / 4, 3 / 4, 1 / 8]
    assert [radical_inverse(i, 3) for i in range(1, 5)] == [1 / 3, 2 / 3, 1 / 9, 4 / 9]


def test_order_of_small_grids_by_hand():
    # G = 2: points (1/2, 1/3) (1/4, 2/3) (3/4, 1/9) (1/8, 4/9) (5/8, 7/9) -> cells, first occurrences.
    assert halton_cells(2).tolist() == [[1, 0], [0, 1], [0, 0], [1, 1]]
    assert halton_order(2).tolist() == [2, 1, 0, 3]
    # G = 4: the 25th point (19/32, 17/27) reaches the last cell.
    assert halton_cells(4).tolist() == [
        [2, 1], [1, 2], [3, 0], [0, 1], [2, 3], [1, 0], [3, 2], [0, 3],
        [2, 0], [1, 1], [0, 0], [1, 3], [3, 1], [0, 2], [3, 3], [2, 2],
    ]  # fmt: skip


def test_order_of_the_reference_grids():
    assert halton_cells(16)[:6].tolist() == [[8, 5], [4, 10], [12, 1], [2, 7], [10, 12], [6, 3]]
    assert halton_cells(24)[:10].tolist() == [
        [12, 8], [6, 16], [18, 2], [3, 10], [15, 18], [9, 5], [21, 13], [1, 21], [13, 0], [7, 8],
    ]  # fmt: skip
    for grid in (8, 16, 24, 32):
        assert sorted(halton_order(grid).tolist()) == list(range(grid * grid))  # a permutation


@pytest.mark.parametrize("grid", [50, 64, 0])
def test_grids_without_an_order_are_refused(grid):
    with pytest.raises(ValueError, match="grid"):
        halton_cells(grid)


# --- the step table -------------------------------------------------------------------------------------


def test_step_counts_of_the_reference():
    assert halton_tokens_per_step(576, 8) == [45, 47, 48, 51, 56, 63, 80, 186]
    assert halton_tokens_per_step(256, 8) == [20, 21, 21, 23, 25, 28, 35, 83]
    assert halton_tokens_per_step(576, 32) == [
        11, 11, 12, 11, 12, 12, 11, 12, 12, 12, 12, 12, 13, 13, 12, 13,
        14, 14, 14, 14, 15, 15, 17, 16, 18, 19, 21, 22, 25, 30, 39, 92,
    ]  # fmt: skip
    assert halton_tokens_per_step(256, 32) == [
        5, 5, 5, 5, 5, 5, 5, 6, 5, 5, 6, 5, 6, 5, 6, 6, 6, 6, 6, 7, 6, 7, 7, 8, 8, 8, 9, 10, 11, 14, 17, 41,
    ]  # fmt: skip


def test_step_counts_by_hand():
    # N = 64, T = 8: ⌊64·(1 − arccos(i/8)/(π/2))⌋ = 5, 10, 15, 21, 27, 34, 43, 64.
    assert halton_tokens_per_step(64, 8) == [5, 5, 5, 6, 6, 7, 9, 21]
    # More steps than tokens: max(i + 1, ·) reveals one per step until none are left.
    assert halton_tokens_per_step(4, 8) == [1, 1, 1, 1, 0, 0, 0, 0]
    assert halton_tokens_per_step(64, 8, start_step=2) == [15, 6, 6, 7, 9, 21]
    assert halton_tokens_per_step(0, 3) == [0, 0, 0] and halton_tokens_per_step(7, 1) == [7]


# --- sample(order="halton") -------------------------------------------------------------------------


def revealed_per_step(trace, sample_index: int, initially: torch.Tensor | None = None) -> list[set[int]]:
    masks = trace.masks[:, sample_index].flatten(1)  # (T, N): still masked after each step
    before = torch.ones(masks.shape[1], dtype=torch.bool) if initially is None else initially.flatten()
    steps = []
    for after in masks:
        steps.append(set((before & ~after).nonzero().flatten().tolist()))
        before = after
    return steps


def test_halton_order_reveals_the_permutation_in_the_table_counts(model):
    result = sample(
        model, [0, 3, 7], seeds=[1, 2, 3], steps=8, order="halton", schedule="halton", cfg_weight=2.0,
        cfg_schedule="constant", return_trace=True,
    )  # fmt: skip
    order = halton_order(8).tolist()
    bounds = [0, 5, 10, 15, 21, 27, 34, 43, 64]
    for index in range(3):
        expected = [set(order[a:b]) for a, b in itertools.pairwise(bounds)]
        assert revealed_per_step(result.trace, index) == expected
    assert result.tokens.shape == (3, 8, 8)
    assert int(result.tokens.min()) >= 0 and int(result.tokens.max()) < model.config.codebook_size


def test_randomized_order_is_a_rolled_permutation_per_sample(model):
    knobs = {"steps": 8, "order": "halton", "schedule": "halton", "randomize_order": True}
    result = sample(model, [1, 2], seeds=[5, 6], return_trace=True, **knobs)
    order = halton_order(8)
    firsts = []
    for index in range(2):
        revealed = revealed_per_step(result.trace, index)
        offsets = [s for s in range(64) if set(torch.roll(order, s)[:5].tolist()) == revealed[0]]
        assert len(offsets) == 1
        rolled = torch.roll(order, offsets[0]).tolist()
        assert revealed[1] == set(rolled[5:10])
        firsts.append(offsets[0])
    # A sample's result depends on its seed only, not on its batch.
    alone = sample(model, [2], seeds=[6], **knobs)
    assert torch.equal(alone.tokens[0], result.tokens[1])


def test_halton_inpainting_keeps_known_tokens(model):
    generator = torch.Generator().manual_seed(0)
    known = torch.randint(0, model.config.codebook_size, (2, 8, 8), generator=generator)
    init = known.clone()
    init[:, 2:6, 1:7] = model.config.mask_token_id
    result = sample(
        model, [0, 1], seeds=[0, 1], init_tokens=init, steps=6, order="halton", schedule="halton",
        return_trace=True,
    )  # fmt: skip
    region = init == model.config.mask_token_id
    assert torch.equal(result.tokens[~region], known[~region])
    counts = halton_tokens_per_step(24, 6)  # the table spans the 24 masked tokens: 2, 3, 2, 4, 4, 9
    assert result.trace.revealed[:, 0].tolist() == counts
    # The region is decoded in the order's sequence restricted to its cells.
    order = [p for p in halton_order(8).tolist() if region[0].flatten()[p]]
    bounds = [sum(counts[:i]) for i in range(len(counts) + 1)]
    expected = [set(order[a:b]) for a, b in itertools.pairwise(bounds)]
    assert revealed_per_step(result.trace, 0, region[0]) == expected


def test_top_1_is_the_guided_argmax(model):
    knobs = {"steps": 1, "order": "halton", "top_k": 1, "cfg_weight": 1.5, "cfg_schedule": "constant"}
    tokens = sample(model, [4], seeds=[0], **knobs)
    blank = torch.full((1, 8, 8), model.config.mask_token_id)
    with torch.no_grad():
        conditional = model(blank, torch.tensor([4]), torch.tensor([False]))
        unconditional = model(blank, torch.tensor([4]), torch.tensor([True]))
    guided = (1 + 1.5) * conditional - 1.5 * unconditional  # the v2 formula
    assert torch.equal(tokens.tokens.flatten(), guided.argmax(-1).flatten())


def test_a_grid_without_an_order_is_refused():
    config = HaltonConfig(codebook_size=16, grid_size=50, num_classes=2, hidden_size=16, depth=1, num_heads=2,
                          mlp_size=32, ffn_multiple_of=8)  # fmt: skip
    with pytest.raises(ValueError, match="50x50"):
        sample(HaltonTransformer(config), [0], seeds=[0], order="halton", steps=2)


# --- knobs, defaults and presets ---------------------------------------------------------------------------


def test_temperature_knobs(model):
    common = {"seeds": [0, 1], "cfg_weight": 0.0, "return_trace": True}
    # Warm-up doubles the temperature (the v2 reference halves its logit multiplier).
    warm = sample(model, [0, 1], steps=1, temperature=1.0, temperature_warmup=1, **common)
    hot = sample(model, [0, 1], steps=1, temperature=2.0, **common)
    assert torch.equal(warm.tokens, hot.tokens)
    # A ramp starts at `temperature` and ends at `temperature_end` (multiplier 1/τ linear in between).
    ramp = sample(model, [0, 1], steps=4, temperature=1.0, temperature_end=0.5, order="halton", **common)
    start = sample(model, [0, 1], steps=4, temperature=1.0, order="halton", **common)
    assert torch.equal(ramp.trace.predictions[0], start.trace.predictions[0])
    assert not torch.equal(ramp.tokens, start.tokens)


def test_v1_defaults_are_unchanged(model):
    config = SamplingConfig()
    v2_knobs = {"order": "confidence", "randomize_order": False, "temperature_end": None}
    v2_knobs.update(temperature_warmup=0, top_k=0)
    assert {name: getattr(config, name) for name in v2_knobs} == v2_knobs
    implicit = sample(model, [0, 1], seeds=[3, 4], return_trace=True)
    explicit = sample(model, [0, 1], seeds=[3, 4], return_trace=True, **config.as_kwargs())
    assert torch.equal(implicit.tokens, explicit.tokens)
    assert torch.equal(implicit.trace.masks, explicit.trace.masks)
    old = {k: v for k, v in config.to_dict().items() if k not in v2_knobs}
    assert SamplingConfig.from_dict(old) == config  # stored before the v2 knobs existed


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"order": "raster"}, "order"),
        ({"randomize_order": True}, "randomize_order"),
        ({"temperature_end": 0.0}, "temperature_end"),
        ({"temperature_warmup": -1}, "temperature_warmup"),
        ({"top_k": 1.5}, "top_k"),
    ],
)
def test_bad_knobs_are_named(changes, message):
    with pytest.raises(ValueError, match=message):
        SamplingConfig(**changes)


def test_v2_sampling_presets():
    large = SAMPLING_PRESETS["halton-imagenet384-large"]
    assert (large.steps, large.order, large.cfg_schedule, large.cfg_weight, large.temperature_warmup) == (
        32, "halton", "constant", 0.5, 1,
    )  # fmt: skip
    names = [name for name in SAMPLING_PRESETS if name.startswith("halton-")]
    weights = {name: SAMPLING_PRESETS[name].cfg_weight for name in names}
    assert weights == {
        "halton-imagenet256-tiny": 1.5, "halton-imagenet256-small": 1.0, "halton-imagenet256-base": 0.7,
        "halton-imagenet384-small": 1.0, "halton-imagenet384-base": 0.7, "halton-imagenet384-large": 0.5,
    }  # fmt: skip


# --- orders and schedules are independent ---------------------------------------------------------------


@pytest.mark.parametrize("order", ["confidence", "halton"])
@pytest.mark.parametrize("schedule", ["arccos", "halton", "arccos-v2", "cosine", "jax-cosine"])
def test_every_order_decodes_with_the_schedule_it_names(model, order, schedule):
    config = SamplingConfig(steps=6, order=order, schedule=schedule, cfg_weight=0.0)
    result = sample(model, [0, 1], seeds=[0, 1], return_trace=True, **config.as_kwargs())
    expected = tokens_per_step(model.config.num_tokens, 6, schedule)
    assert result.trace.revealed[:, 0].tolist() == expected
    assert result.trace.revealed[:, 1].tolist() == expected


def test_v2_defaults_name_the_v2_tables():
    from transformer.config import halton_sampling_config

    for preset in (HALTON_PRESETS["halton-tiny"], HALTON_PRESETS["halton-imagenet384-large"]):
        halton = halton_sampling_config(preset)
        assert (halton.order, halton.schedule) == ("halton", "halton")
        confidence = halton_sampling_config(preset, order="confidence")
        assert (confidence.order, confidence.schedule, confidence.steps) == ("confidence", "arccos-v2", 12)
    assert all(
        config.schedule == "halton" for name, config in SAMPLING_PRESETS.items() if config.order == "halton"
    )


def test_folders_saved_before_the_split_decode_as_before(tmp_path, model):
    """A v2 folder stores {"order": "halton", "schedule": "arccos"}, which meant the Halton table: it
    still does when read back, and decodes to the tokens of order "halton" + schedule "halton"."""
    import json

    from transformer.checkpoint import load_sampling_config, save_transformer
    from transformer.config import stored_sampling_config

    save_transformer(model, tmp_path / "old", sampling=SAMPLING_PRESETS["halton"])
    path = tmp_path / "old" / "config.json"
    document = json.loads(path.read_text())
    document["sampling"]["schedule"] = "arccos"  # as written before schedules and orders were split
    path.write_text(json.dumps(document))
    loaded = load_sampling_config(tmp_path / "old")
    assert loaded == SAMPLING_PRESETS["halton"] and loaded.schedule == "halton"
    old_pair = sample(model, [0, 1], seeds=[3, 4], **loaded.as_kwargs()).tokens
    explicit = sample(model, [0, 1], seeds=[3, 4], **SAMPLING_PRESETS["halton"].as_kwargs()).tokens
    assert torch.equal(old_pair, explicit)
    # Only that pair is read differently; other stored settings are read as written.
    for values in ({"order": "confidence", "schedule": "arccos"}, {"order": "halton", "schedule": "cosine"}):
        assert stored_sampling_config(values) == SamplingConfig.from_dict(values)
    assert stored_sampling_config({"order": "halton"}).schedule == "halton"

"""The masking schedule: the reference's per-step tables, the JAX decoder's, and training ratios."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transformer.masking import REFERENCE_SCHEDULES, V2_SCHEDULES, check_schedule, mask_ratio, tokens_per_step

# valeoai v1 `adap_sche` (docs/reference.md#step-tables).
REFERENCE_TABLES = [
    (8, 256, "arccos", [1, 18, 26, 32, 38, 43, 48, 50]),
    (8, 256, "cosine", [1, 12, 22, 32, 41, 47, 51, 50]),
    (8, 256, "linear", [1, 9, 18, 27, 37, 46, 55, 63]),
    (8, 256, "square", [1, 13, 24, 34, 41, 46, 49, 48]),
    (8, 256, "root", [1, 7, 14, 22, 30, 41, 55, 86]),
    (15, 1024, "arccos", [1, 26, 38, 46, 54, 61, 67, 73, 79, 84, 89, 94, 99, 104, 109]),
    (12, 256, "arccos", [1, 9, 13, 17, 19, 22, 24, 26, 28, 30, 32, 35]),
]
# google-research/maskgit `parallel_decode` with the cosine schedule (docs/reference.md#step-tables).
JAX_TABLES = [
    (8, 256, [5, 15, 24, 31, 39, 45, 48, 49]),
    (12, 1024, [9, 26, 43, 60, 74, 88, 101, 111, 121, 126, 132, 133]),
]


@pytest.mark.parametrize(("steps", "num_tokens", "schedule", "expected"), REFERENCE_TABLES)
def test_reference_tables(steps, num_tokens, schedule, expected):
    assert tokens_per_step(num_tokens, steps, schedule) == expected


@pytest.mark.parametrize(("steps", "num_tokens", "expected"), JAX_TABLES)
def test_jax_cosine_tables(steps, num_tokens, expected):
    counts = tokens_per_step(num_tokens, steps, "jax-cosine")
    assert counts == expected
    assert sum(counts) == num_tokens


@given(
    num_tokens=st.integers(1, 2048),
    steps=st.integers(1, 64),
    schedule=st.sampled_from(REFERENCE_SCHEDULES),
)
@settings(max_examples=300, deadline=None)
def test_reference_counts_cover_every_token_once(num_tokens, steps, schedule):
    counts = tokens_per_step(num_tokens, steps, schedule)
    assert len(counts) == steps
    assert sum(counts) == num_tokens
    assert min(counts) >= 0
    if num_tokens >= steps:
        assert min(counts) >= 1  # every step reveals something when there is enough to reveal


@given(
    num_tokens=st.integers(1, 1024),
    steps=st.integers(2, 32),
    schedule=st.sampled_from(
        (*REFERENCE_SCHEDULES, "jax-cosine", "jax-uniform", "jax-pow2", "jax-log", "jax-exp")
    ),
    data=st.data(),
)
@settings(max_examples=200, deadline=None)
def test_start_step_merges_the_skipped_steps(num_tokens, steps, schedule, data):
    start = data.draw(st.integers(0, steps - 1))
    full = tokens_per_step(num_tokens, steps, schedule)
    late = tokens_per_step(num_tokens, steps, schedule, start_step=start)
    assert len(late) == steps - start
    assert late == [sum(full[: start + 1]), *full[start + 1 :]]


@pytest.mark.parametrize("schedule", ["jax-cosine", "jax-uniform", "jax-pow3", "jax-log", "jax-exp"])
def test_jax_counts_cover_every_token_once(schedule):
    counts = tokens_per_step(256, 10, schedule)
    assert sum(counts) == 256 and min(counts) >= 1


def test_mask_ratio_follows_the_reference_training_modes():
    r = torch.tensor([0.0, 0.25, 0.5, 1.0])
    torch.testing.assert_close(mask_ratio(r, "arccos"), torch.arccos(r) / (math.pi / 2))
    torch.testing.assert_close(mask_ratio(r, "cosine"), torch.cos(r * math.pi / 2))
    torch.testing.assert_close(mask_ratio(r, "linear"), r)
    torch.testing.assert_close(mask_ratio(r, "square"), r**2)
    torch.testing.assert_close(mask_ratio(r, "root"), r.sqrt())


def test_arccos_training_ratio_has_the_documented_mean():
    # ρ = arccos(r)/(π/2) with r ~ U(0, 1) has mean 2/π ≈ 0.637 (docs/reference.md#masking-schedules).
    draws = torch.rand(200_000, generator=torch.Generator().manual_seed(0))
    ratios = mask_ratio(draws, "arccos")
    assert ratios.min() >= 0 and ratios.max() <= 1
    assert abs(ratios.mean().item() - 2 / math.pi) < 0.005


def test_bad_schedule_arguments_are_named():
    with pytest.raises(ValueError, match="unknown masking schedule 'cosin'"):
        tokens_per_step(256, 8, "cosin")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        tokens_per_step(256, 0, "arccos")
    with pytest.raises(ValueError, match="start_step"):
        tokens_per_step(256, 8, "arccos", start_step=8)
    with pytest.raises(ValueError, match="unknown masking schedule"):
        check_schedule("jax-powx")
    assert check_schedule("jax-pow2.5") == "jax-pow2.5"
    assert tokens_per_step(0, 4, "arccos") == [0, 0, 0, 0]


# valeoai v2's confidence sampler (docs/reference.md#sampler-schedules): cumulative targets from u = 0.
ARCCOS_V2_TABLES = [
    (8, 576, [1, 51, 54, 56, 61, 68, 86, 199]),
    (8, 256, [1, 22, 24, 25, 27, 30, 38, 89]),
    (32, 576, [1, 10, 12, 12, 12, 12, 12, 12, 12, 13, 12, 13, 12, 13, 13, 14,
               13, 14, 15, 14, 16, 15, 17, 17, 18, 20, 20, 23, 26, 30, 39, 94]),
    (32, 256, [1, 4, 5, 5, 6, 5, 5, 6, 5, 6, 5, 6, 5, 6, 6, 6,
               6, 6, 6, 7, 7, 7, 7, 8, 8, 8, 10, 10, 11, 14, 17, 42]),
]  # fmt: skip


@pytest.mark.parametrize(("steps", "num_tokens", "expected"), ARCCOS_V2_TABLES)
def test_arccos_v2_tables(steps, num_tokens, expected):
    assert tokens_per_step(num_tokens, steps, "arccos-v2") == expected


def test_arccos_v2_by_hand():
    # N = 576, T = 8: u = i/7, targets int(576·(1 − arccos(u)/(π/2))) kept >= i + 1:
    # 1, 52, 106, 162, 223, 291, 377, 576 cumulative.
    counts = tokens_per_step(576, 8, "arccos-v2")
    assert list(itertools.accumulate(counts)) == [1, 52, 106, 162, 223, 291, 377, 576]
    # More steps than tokens: one per step until none are left; a single step reveals everything.
    assert tokens_per_step(4, 8, "arccos-v2") == [1, 1, 1, 1, 0, 0, 0, 0]
    assert tokens_per_step(9, 1, "arccos-v2") == [9]
    assert tokens_per_step(576, 8, "arccos-v2", start_step=2) == [106, 56, 61, 68, 86, 199]
    # It is not v1's arccos table, nor the Halton sampler's, for the same N and T.
    assert tokens_per_step(576, 8, "arccos") != tokens_per_step(576, 8, "arccos-v2")
    assert tokens_per_step(576, 8, "halton") == [45, 47, 48, 51, 56, 63, 80, 186]


@given(
    num_tokens=st.integers(0, 4096),
    steps=st.integers(1, 96),
    schedule=st.sampled_from(V2_SCHEDULES),
)
@settings(max_examples=400, deadline=None)
def test_v2_counts_cover_every_token_once(num_tokens, steps, schedule):
    counts = tokens_per_step(num_tokens, steps, schedule)
    assert len(counts) == steps and sum(counts) == num_tokens and min(counts) >= 0
    if num_tokens >= steps:
        assert min(counts) >= 1  # the targets are kept >= i + 1
    else:  # one token per step, then none
        assert counts == [1] * num_tokens + [0] * (steps - num_tokens)


@pytest.mark.parametrize("schedule", V2_SCHEDULES)
def test_v2_tables_are_for_sampling_only(schedule):
    assert check_schedule(schedule) == schedule
    with pytest.raises(ValueError, match="trains with 'arccos'"):
        mask_ratio(torch.rand(4), schedule)

"""The masking schedule, once, for training (how many tokens to mask) and sampling (how many to reveal).

Two families of schedules, named as their sources name them:

* valeoai v1 (docs/reference.md#masking-schedules): ``arccos`` (the reference default), ``cosine``,
  ``linear``, ``square``, ``root``. At training time a sample's mask ratio is f(r) with r ~ U(0, 1)
  (arccos(r)/(π/2), cos(πr/2), r, r², √r; the reference has no "root" training mode, √r is ours).
  At sampling time `tokens_per_step` reproduces the reference's `adap_sche` exactly: weights
  w_t = g(linspace(1, 0, T)_t) are normalised to N tokens, rounded half-to-even in float32 (as the
  reference computes them), zeros become 1, and the last step absorbs the remainder.
* google-research/maskgit (same section): ``jax-cosine``, ``jax-uniform``, ``jax-pow<K>`` (e.g. ``jax-pow2``),
  ``jax-log``, ``jax-exp``: γ(ratio) is the fraction still masked; step t leaves
  ⌊N·γ((t+1)/T)⌋ tokens masked (clamped to ≥ 1 and < the number still masked) and the last step
  reveals the rest; the paper's training masks γ(r)·N tokens.
* valeoai v2 (docs/reference.md#next-family-step-tables), step tables for sampling only (v2 trains with
  ``arccos``): ``halton``, the table of the v2 Halton sampler, whose step i has revealed
  rᵢ = max(i + 1, int(N·(1 − arccos((i + 1)/T)/(π/2)))) tokens; and ``arccos-v2``, the table of the
  v2 confidence sampler, the same curve read at uᵢ = i/(T − 1) (from 0, so step 0 reveals one
  token). Both are computed in float32 and truncated as the reference does, capped at N.

A schedule says only *how many* tokens a step reveals; the sampler's order (`SamplingConfig.order`)
says *which*, so every schedule works with every order.

Counts here are *per-step increments* (tokens revealed at each step), never cumulative ratios.
"""

from __future__ import annotations

import functools
import math
import re

import torch

REFERENCE_SCHEDULES = ("arccos", "cosine", "linear", "square", "root")
V2_SCHEDULES = ("halton", "arccos-v2")  # step tables only: `mask_ratio` refuses them
JAX_SCHEDULES = ("jax-cosine", "jax-uniform", "jax-log", "jax-exp", "jax-pow<K>")
SCHEDULES = REFERENCE_SCHEDULES + V2_SCHEDULES + JAX_SCHEDULES

_JAX_POW = re.compile(r"^jax-pow(\d+(?:\.\d+)?)$")


def check_schedule(schedule: str) -> str:
    """Return `schedule` if it is a known schedule name, else raise a ValueError listing the names."""
    if schedule in REFERENCE_SCHEDULES + V2_SCHEDULES + JAX_SCHEDULES[:-1] or _JAX_POW.match(schedule):
        return schedule
    raise ValueError(f"unknown masking schedule {schedule!r}; expected one of {SCHEDULES}")


def _reference_weight(r: torch.Tensor, schedule: str) -> torch.Tensor:
    """valeoai `adap_sche` weights for r running from 1 to 0 (the share of tokens revealed per step)."""
    if schedule == "root":
        return 1 - r.sqrt()
    if schedule == "linear":
        return 1 - r
    if schedule == "square":
        return 1 - r**2
    if schedule == "cosine":
        return torch.cos(r * math.pi * 0.5)
    return torch.arccos(r) / (math.pi * 0.5)  # arccos


def jax_gamma(ratio: torch.Tensor, schedule: str, num_tokens: int) -> torch.Tensor:
    """google-research/maskgit `mask_schedule.schedule`: fraction of tokens still masked at `ratio`.

    Args:
        ratio: progress in [0, 1] (any shape).
        schedule: a ``jax-*`` name.
        num_tokens: N, used by the log and exp schedules.

    Returns:
        γ(ratio), same shape, clipped to [1e-6, 1] as the JAX decoder does.
    """
    method = schedule.removeprefix("jax-")
    log_tokens = math.log2(max(num_tokens, 2))  # a 1-token grid would divide by log2(1) = 0
    if method == "cosine":
        gamma = torch.cos(math.pi / 2 * ratio)
    elif method == "uniform":
        gamma = 1 - ratio
    elif method == "log":
        gamma = -torch.log2(ratio) / log_tokens
    elif method == "exp":
        gamma = 1 - torch.exp2(-log_tokens * (1 - ratio))
    else:
        match = _JAX_POW.match(schedule)
        if match is None:
            raise ValueError(f"unknown masking schedule {schedule!r}; expected one of {SCHEDULES}")
        gamma = 1 - ratio ** float(match.group(1))
    return gamma.clamp(1e-6, 1.0)


def mask_ratio(uniform: torch.Tensor, schedule: str = "arccos", num_tokens: int = 256) -> torch.Tensor:
    """Training mask ratio ρ in [0, 1] for each draw r ~ U(0, 1).

    Args:
        uniform: r, FloatTensor[B] of U(0, 1) draws.
        schedule: schedule name; valeoai names follow `get_mask_code`, ``jax-*`` names give γ(r).
        num_tokens: N (only the ``jax-log`` and ``jax-exp`` schedules depend on it).

    Returns:
        FloatTensor[B] of mask ratios.
    """
    check_schedule(schedule)
    if schedule in V2_SCHEDULES:
        raise ValueError(
            f"{schedule!r} is a sampling step table of the v2 reference, which trains with 'arccos'; "
            f"train with one of {REFERENCE_SCHEDULES + JAX_SCHEDULES}"
        )
    r = uniform.float()
    if schedule == "arccos":
        return torch.arccos(r.clamp(-1.0, 1.0)) / (math.pi * 0.5)
    if schedule == "cosine":
        return torch.cos(r * math.pi * 0.5)
    if schedule == "linear":
        return r
    if schedule == "square":
        return r**2
    if schedule == "root":
        return r.sqrt()
    return jax_gamma(r, schedule, num_tokens)


@functools.lru_cache(maxsize=1024)
def _reference_counts(num_tokens: int, steps: int, schedule: str) -> tuple[int, ...]:
    if steps == 1:
        return (num_tokens,)  # the reference divides 0 by 0 here (its only weight is g(1) = 0)
    # float32 like the reference (torch.linspace's default dtype): rounding at .5 boundaries depends on it.
    r = torch.linspace(1, 0, steps, dtype=torch.float32)
    weights = _reference_weight(r, schedule)
    counts = (weights / weights.sum() * num_tokens).round()
    counts[counts == 0] = 1
    counts[-1] += num_tokens - counts.sum()
    counts = [int(c) for c in counts.tolist()]
    if min(counts) < 1:
        # With many steps for few tokens the reference's last count goes to 0 or below (its zeros-to-1
        # rule overshoots N). Only then: round the cumulative schedule instead, keeping >= 1 token per
        # step when N >= T, so the counts stay a valid partition of N that follows the same curve.
        floor = 1 if num_tokens >= steps else 0
        cumulative = (
            (weights.double().cumsum(0) / weights.double().sum() * num_tokens).round().long().tolist()
        )
        total, counts = 0, []
        for step, target in enumerate(cumulative):
            low = total + floor
            high = num_tokens - floor * (steps - 1 - step)
            reached = min(max(int(target), low), high)
            counts.append(reached - total)
            total = reached
    return tuple(counts)


@functools.lru_cache(maxsize=1024)
def _v2_counts(num_tokens: int, steps: int, schedule: str) -> tuple[int, ...]:
    if schedule == "halton":
        progress = [torch.tensor((step + 1) / steps) for step in range(steps)]  # (i + 1)/T, float32
    else:  # arccos-v2: u = linspace(0, 1, T), float32 (torch's default dtype, as the reference)
        progress = list(torch.linspace(0, 1, steps))
    revealed, counts = 0, []
    for step, ratio in enumerate(progress):
        # float32 throughout, as the reference: arccos -> / (π/2) -> 1 − · -> · N -> int (truncates)
        fraction = 1 - torch.arccos(ratio) / (math.pi * 0.5)
        target = min(max(step + 1, int(fraction * num_tokens)), num_tokens)
        counts.append(max(target - revealed, 0))
        revealed = max(revealed, target)
    # Only arccos-v2 with T = 1 (u = [0]) ends short of N; the last step reveals the rest, as ours always do.
    counts[-1] += num_tokens - revealed
    return tuple(counts)


@functools.lru_cache(maxsize=1024)
def _jax_counts(num_tokens: int, steps: int, schedule: str) -> tuple[int, ...]:
    ratios = torch.arange(1, steps + 1, dtype=torch.float64) / steps
    gammas = jax_gamma(ratios, schedule, num_tokens).tolist()
    unknown, counts = num_tokens, []
    for gamma in gammas:
        still_masked = max(1, min(unknown - 1, math.floor(num_tokens * gamma)))
        revealed = max(0, unknown - still_masked)
        counts.append(revealed)
        unknown -= revealed
    # The JAX decoder re-masks one token after its last step but returns the prediction made before
    # that re-masking, so its output reveals everything: the last step takes the remainder.
    counts[-1] += unknown
    return tuple(counts)


def tokens_per_step(
    num_tokens: int, steps: int, schedule: str = "arccos", *, start_step: int = 0
) -> list[int]:
    """Number of tokens revealed at each decoding step.

    For valeoai v1 schedules this is the reference `adap_sche` table (e.g. arccos, T = 8, N = 256:
    1, 18, 26, 32, 38, 43, 48, 50); for the v2 tables, the v2 samplers' (halton, T = 8, N = 256:
    20, 21, 21, 23, 25, 28, 35, 83; arccos-v2, T = 8, N = 576: 1, 51, 54, 56, 61, 68, 86, 199); for
    ``jax-*`` schedules it is what the JAX decoder's output reveals (jax-cosine, T = 8, N = 256:
    5, 15, 24, 31, 39, 45, 48, 49). Counts always sum to N; the v2 tables have steps that reveal
    nothing when N < T (they give the first N steps one token each).

    Args:
        num_tokens: N, tokens to reveal (the masked tokens of a sample).
        steps: T, total steps of the schedule (>= 1).
        schedule: schedule name.
        start_step: start later in the schedule (class-guided editing, JAX demo `start_iter`): the
            first `start_step + 1` steps are merged into one, so `steps - start_step` counts come back.

    Returns:
        list of `steps - start_step` non-negative ints.
    """
    check_schedule(schedule)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 <= start_step < steps:
        raise ValueError(f"start_step must be in [0, steps={steps}), got {start_step}")
    if num_tokens < 0:
        raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
    if num_tokens == 0:
        return [0] * (steps - start_step)
    if schedule in REFERENCE_SCHEDULES:
        counts = list(_reference_counts(num_tokens, steps, schedule))
    elif schedule in V2_SCHEDULES:
        counts = list(_v2_counts(num_tokens, steps, schedule))
    else:
        counts = list(_jax_counts(num_tokens, steps, schedule))
    return [sum(counts[: start_step + 1]), *counts[start_step + 1 :]]

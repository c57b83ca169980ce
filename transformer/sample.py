"""`sample()`: MaskGIT iterative decoding, the valeoai v1 loop with its defects fixed.

The loop of docs/reference.md#sampler. Starting from a grid of [MASK] (or a partially known grid), each
of T steps runs the model once, samples a code at every still-masked position, scores it by its
log-probability plus Gumbel noise whose scale decays linearly from `gumbel_temperature` to 0, and
keeps the most confident `tokens_per_step(...)[t]` of them. Decided tokens are never re-masked.
Classifier-free guidance runs the conditional and unconditional halves as **one** batched forward,
with logits ℓ = ℓ_c + ω_t (ℓ_c − ℓ_u) (= (1 + ω_t) ℓ_c − ω_t ℓ_u) and ω_t ramping linearly from 0
at the first step to `cfg_weight` at the last (the reference's MUSE-style warm-up).

Fixed relative to the reference:

* the per-step count is guarded **per sample** (the reference clamps it by the batch total) and the
  schedule is computed from each sample's own number of masked tokens, so inpainting a small
  region still takes `steps` steps;
* [MASK] is never sampled (the head has no [MASK] column here), so no final clamp is needed;
* exactly the scheduled number of tokens is revealed (no extra admissions on confidence ties);
* softmax and sampling run in float32 whatever autocast the caller set;
* `temperature` *divides* the logits (the usual meaning). The reference's `sm_temp` s multiplies
  them, so reference `sm_temp=s` is `temperature=1/s` here (its visualisation setting 1.3 ≈ 0.77).

Randomness is per sample: sample i draws all its noise (2·N numbers per step, in a fixed order)
from its own generator seeded by `seeds[i]`, so a request decodes to the same tokens whether it is
sampled alone or batched with others (the Serve deployment relies on this).

No work is wasted: logits are computed only at still-masked positions and only over the K codes;
the unconditional half is skipped while ω_t = 0; a step at which no sample reveals anything is
skipped.

Dimensions: B batch, h×w token grid, N = h·w, M masked positions in the batch, K codebook size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn

from transformer.config import SamplingConfig
from transformer.halton_order import halton_order, halton_tokens_per_step
from transformer.masking import tokens_per_step
from transformer.model import unwrap_model

ProgressCallback = Callable[[int, int], None]


class SampleTrace(NamedTuple):
    """What each decoding step did (for visualisation and tests)."""

    predictions: (
        torch.Tensor
    )  # LongTensor[T', B, h, w]: decided tokens plus this step's samples at masked positions
    masks: torch.Tensor  # BoolTensor[T', B, h, w]: positions still masked after the step
    revealed: torch.Tensor  # LongTensor[T', B]: tokens revealed at the step


class SampleResult(NamedTuple):
    """Sampled token grids, and the trace when asked for."""

    tokens: torch.Tensor  # LongTensor[B, h, w], every entry a code in [0, K)
    trace: SampleTrace | None


def per_sample_generators(
    batch: int, *, seeds: Sequence[int] | torch.Tensor | None = None, generator: torch.Generator | None = None
) -> list[torch.Generator]:
    """One CPU generator per sample: seeded by `seeds[i]`, or by seeds drawn from `generator`
    (or from torch's global generator when neither is given)."""
    if seeds is not None and generator is not None:
        raise ValueError("give either seeds (one per sample) or generator, not both")
    if seeds is None:
        seeds = torch.randint(0, 2**62, (batch,), generator=generator).tolist()
    seeds = [int(seed) for seed in (seeds.tolist() if isinstance(seeds, torch.Tensor) else seeds)]
    if len(seeds) != batch:
        raise ValueError(f"seeds must have one entry per sample ({batch}), got {len(seeds)}")
    return [torch.Generator().manual_seed(seed) for seed in seeds]


def cfg_weight_at(step: int, steps: int, cfg_weight: float, cfg_schedule: str) -> float:
    """Guidance weight ω_t at global step `step` of `steps` (linear: 0 → w over t/(T−1))."""
    if cfg_schedule == "constant" or steps == 1:
        return cfg_weight
    return cfg_weight * step / (steps - 1)


def gumbel_scale_at(step: int, steps: int, gumbel_temperature: float) -> float:
    """Gumbel noise scale at global step `step`: `gumbel_temperature`·(1 − t/(T−1)), 0 at the last step."""
    if steps == 1:
        return 0.0
    return gumbel_temperature * (1.0 - step / (steps - 1))


def temperature_at(
    step: int, steps: int, temperature: float, temperature_end: float | None, temperature_warmup: int
) -> float:
    """Softmax temperature at global step `step`: `temperature`, or with `temperature_end` the one whose
    logit multiplier 1/τ runs linearly from 1/temperature to 1/temperature_end; doubled during the
    first `temperature_warmup` steps (the v2 reference halves its multiplier there)."""
    value = temperature
    if temperature_end is not None:
        start, end = 1.0 / temperature, 1.0 / temperature_end
        fraction = step / (steps - 1) if steps > 1 else 0.0
        value = 1.0 / (start + (end - start) * fraction)
    if step < temperature_warmup:
        value = value * 2.0
    return value


def _halton_ranks(
    masked: torch.Tensor, grid: int, generators: list[torch.Generator], randomize: bool
) -> torch.Tensor:
    """LongTensor[B, N]: each masked position's place among the sample's masked positions in its
    Halton order (rolled by an offset from the sample's generator when `randomize`); unmasked
    positions rank last."""
    batch, num_tokens = masked.shape
    order = halton_order(grid)  # (N,) raster positions in decoding order
    rank = torch.empty_like(order)
    rank[order] = torch.arange(num_tokens)  # (N,) place of each position in the order
    if randomize:  # torch.roll(order, s) puts order[k] at (k + s) mod N
        offsets = torch.cat([torch.randint(0, num_tokens, (1,), generator=g) for g in generators])  # (B,)
        ranks = (rank[None, :] + offsets[:, None]) % num_tokens  # (B, N)
    else:
        ranks = rank[None, :].expand(batch, num_tokens)
    ranks = ranks.to(masked.device)
    priority = torch.where(masked, ranks, ranks + num_tokens)  # masked positions first, in order
    return priority.argsort(dim=1).argsort(dim=1)  # (B, N)


def _as_class_ids(class_ids: torch.Tensor | Sequence[int], num_classes: int) -> torch.Tensor:
    class_ids = torch.as_tensor(class_ids)
    if class_ids.dim() != 1 or class_ids.dtype.is_floating_point or class_ids.dtype == torch.bool:
        raise ValueError(
            f"class_ids must be a 1-D integer sequence, got {tuple(class_ids.shape)} {class_ids.dtype}"
        )
    if class_ids.numel() == 0:
        raise ValueError("class_ids is empty: nothing to sample")
    if int(class_ids.min()) < 0 or int(class_ids.max()) >= num_classes:
        raise ValueError(
            f"class ids must be in [0, {num_classes}), "
            f"got values in [{int(class_ids.min())}, {int(class_ids.max())}]"
        )
    return class_ids.long()


def _initial_tokens(
    init_tokens: torch.Tensor | None, batch: int, grid: int, mask_token_id: int, device: torch.device
) -> torch.Tensor:
    if init_tokens is None:
        return torch.full((batch, grid * grid), mask_token_id, dtype=torch.long, device=device)
    if init_tokens.dim() != 3 or tuple(init_tokens.shape) != (batch, grid, grid):
        raise ValueError(
            f"init_tokens must have shape ({batch}, {grid}, {grid}), got {tuple(init_tokens.shape)}"
        )
    if init_tokens.dtype.is_floating_point or init_tokens.dtype == torch.bool:
        raise ValueError(f"init_tokens must be an integer tensor, got {init_tokens.dtype}")
    if int(init_tokens.min()) < 0 or int(init_tokens.max()) > mask_token_id:
        raise ValueError(
            f"init_tokens must hold codes in [0, {mask_token_id}) or {mask_token_id} ([MASK]); got values in "
            f"[{int(init_tokens.min())}, {int(init_tokens.max())}]"
        )
    return init_tokens.reshape(batch, -1).long().to(device).clone()


def _draw_noise(generators: list[torch.Generator], num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample uniforms for inverse-CDF sampling and Gumbel(0, 1) noise: two FloatTensor[B, N]."""
    uniforms, gumbels = [], []
    tiny = torch.finfo(torch.float32).tiny
    for generator in generators:
        uniforms.append(torch.rand(num_tokens, generator=generator))
        gumbel_uniform = torch.rand(num_tokens, generator=generator).clamp_min(tiny)
        gumbels.append(-torch.log(-torch.log(gumbel_uniform).clamp_max(-tiny)))
    return torch.stack(uniforms), torch.stack(gumbels)


def _select_most_confident(confidence: torch.Tensor, reveal: torch.Tensor) -> torch.Tensor:
    """BoolTensor[B, N]: exactly `reveal[i]` highest-confidence positions of each row (−inf never chosen
    unless a row must reveal more finite entries than it has, which the caller rules out)."""
    k = int(reveal.max())
    chosen = torch.zeros_like(confidence, dtype=torch.bool)
    if k == 0:
        return chosen
    top = confidence.topk(k, dim=1).indices  # (B, k)
    keep = torch.arange(k, device=confidence.device)[None, :] < reveal[:, None]  # (B, k)
    return chosen.scatter_(1, top, keep)


@torch.no_grad()
def sample(
    model: nn.Module,
    class_ids: torch.Tensor | Sequence[int],
    *,
    steps: int = 8,
    schedule: str = "arccos",
    temperature: float = 1.0,
    gumbel_temperature: float = 4.5,
    cfg_weight: float = 3.0,
    cfg_schedule: str = "linear",
    order: str = "confidence",
    randomize_order: bool = False,
    temperature_end: float | None = None,
    temperature_warmup: int = 0,
    top_k: int = 0,
    init_tokens: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    seeds: Sequence[int] | torch.Tensor | None = None,
    start_step: int = 0,
    return_trace: bool = False,
    progress: bool | ProgressCallback | None = None,
) -> SampleResult:
    """Decode class-conditional token grids with MaskGIT's iterative parallel decoding.

    Defaults are the reference's ImageNet-256 settings (`SamplingConfig()`); pass
    `**sampling_config.as_kwargs()` to use a stored configuration.

    Args:
        model: a MaskTransformer (or a wrapper of one); put in eval mode for the call.
        class_ids: LongTensor[B] (or a sequence) of classes in [0, num_classes).
        steps: T, decoding steps (>= 1); the number of forward passes when the grid starts fully masked.
        schedule: masking schedule name (`transformer.masking`).
        temperature: logits are divided by it (> 0). Reference `sm_temp` s = temperature 1/s.
        gumbel_temperature: Gumbel noise scale on log-confidences at the first step (decays to 0).
        cfg_weight: classifier-free guidance weight w (0 = conditional only, one B-sized forward).
        cfg_schedule: "linear" (0 → w, v1 reference) or "constant" (v2 reference).
        order: "confidence" (v1: reveal the most confident samples) or "halton" (v2: reveal the next
            cells of the Halton permutation, counted by the v2 step table; `schedule` must be "arccos",
            `gumbel_temperature` is unused). Either order works with either transformer family.
        randomize_order: with order "halton", roll each sample's permutation by an offset drawn
            from its seed.
        temperature_end: None = `temperature` at every step; else the logit multiplier 1/τ moves
            linearly from 1/temperature to 1/temperature_end (v2's `sm_temp_min` → `sm_temp_max`).
        temperature_warmup: the first this-many steps use twice the temperature (v2's warm-up).
        top_k: if > 0, sample among the k most probable codes only.
        init_tokens: optional LongTensor[B, h, w]; codes are kept, `mask_token_id` entries are decoded
            (inpainting / editing). Each sample's schedule spans its own masked count.
        generator: draws the per-sample seeds when `seeds` is not given.
        seeds: one int per sample; sample i's result depends only on its seed, class and init tokens.
        start_step: begin at this step of a `steps`-step schedule (class-guided editing, JAX
            `start_iter`); `steps - start_step` steps run, with the noise and CFG ramps of the full schedule.
        return_trace: also return the per-step predictions and masks.
        progress: True for a tqdm bar over steps, or a callback `(steps_done, total_steps)`.

    Returns:
        SampleResult(tokens LongTensor[B, h, w], trace or None).
    """
    transformer = unwrap_model(model)
    config = transformer.config
    SamplingConfig(  # validates the knobs, with the same messages as a stored config
        steps=steps,
        schedule=schedule,
        temperature=temperature,
        gumbel_temperature=gumbel_temperature,
        cfg_weight=cfg_weight,
        cfg_schedule=cfg_schedule,
        order=order,
        randomize_order=randomize_order,
        temperature_end=temperature_end,
        temperature_warmup=temperature_warmup,
        top_k=top_k,
    )
    if not 0 <= start_step < steps:
        raise ValueError(f"start_step must be in [0, steps={steps}), got {start_step}")
    device = next(transformer.parameters()).device
    class_ids = _as_class_ids(class_ids, config.num_classes).to(device)
    batch, num_tokens, grid = class_ids.shape[0], config.num_tokens, config.grid_size
    tokens = _initial_tokens(init_tokens, batch, grid, config.mask_token_id, device)  # (B, N)
    masked = tokens == config.mask_token_id  # (B, N)
    generators = per_sample_generators(batch, seeds=seeds, generator=generator)
    to_reveal = masked.sum(dim=1).tolist()
    if order == "halton":
        step_counts = [halton_tokens_per_step(n, steps, start_step=start_step) for n in to_reveal]
        halton_rank = _halton_ranks(masked, grid, generators, randomize_order)  # (B, N)
    else:
        step_counts = [tokens_per_step(n, steps, schedule, start_step=start_step) for n in to_reveal]
    counts = torch.tensor(step_counts, dtype=torch.long, device=device)  # (B, T')
    revealed_before = torch.zeros(batch, dtype=torch.long, device=device)  # (B,) Halton order only
    total_steps = steps - start_step
    no_drop = torch.zeros(batch, dtype=torch.bool, device=device)
    trace_predictions, trace_masks, trace_revealed = [], [], []
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, desc="sampling", unit="step")

    was_training = transformer.training
    transformer.eval()
    try:
        for index in range(total_steps):
            step = start_step + index
            uniforms, gumbels = (
                noise.to(device) for noise in _draw_noise(generators, num_tokens)
            )  # (B, N) each
            remaining = masked.sum(dim=1)  # (B,)
            is_last = index == total_steps - 1
            reveal = remaining if is_last else torch.minimum(counts[:, index], remaining)  # per-sample guard
            predictions = tokens.clone()
            if int(reveal.sum()) > 0:
                if order == "halton":  # the next cells of each sample's Halton order
                    query = masked & (halton_rank < (revealed_before + reveal)[:, None])  # (B, N)
                else:  # every masked position competes on confidence
                    query = masked
                omega = cfg_weight_at(step, steps, cfg_weight, cfg_schedule)
                if omega > 0:
                    # One batched forward: conditional half, then unconditional half.
                    logits = model(
                        tokens.view(batch, grid, grid).repeat(2, 1, 1),
                        class_ids.repeat(2),
                        torch.cat([no_drop, ~no_drop]),
                        positions=query.repeat(2, 1),
                    ).float()  # (2M, K)
                    conditional, unconditional = logits.chunk(2)
                    logits = conditional + omega * (conditional - unconditional)  # (M, K)
                else:
                    logits = model(
                        tokens.view(batch, grid, grid), class_ids, no_drop, positions=query
                    ).float()  # (M, K)
                if top_k > 0 and top_k < logits.shape[-1]:
                    kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (M, 1)
                    logits = logits.masked_fill(logits < kth, -math.inf)
                tau = temperature_at(step, steps, temperature, temperature_end, temperature_warmup)
                log_probs = torch.log_softmax(logits / tau, dim=-1)  # (M, K)
                # Inverse-CDF sampling with the sample's own uniforms (batch-independent, unlike multinomial).
                cdf = log_probs.exp().cumsum(dim=-1)  # (M, K)
                target = uniforms[query][:, None] * cdf[:, -1:]  # (M, 1)
                sampled = torch.searchsorted(cdf, target, right=True).clamp_max(
                    config.codebook_size - 1
                )  # (M, 1)
                predictions[query] = sampled.squeeze(1)
                if order == "halton":
                    chosen = query
                else:
                    confidence = log_probs.gather(1, sampled).squeeze(1)  # (M,)
                    noise_scale = gumbel_scale_at(step, steps, gumbel_temperature)
                    confidence = confidence + noise_scale * gumbels[masked]
                    # Finite, so a masked position always outranks the −inf of decided ones.
                    confidence = confidence.clamp_min(torch.finfo(torch.float32).min)
                    scores = torch.full(masked.shape, -math.inf, device=device)  # (B, N)
                    scores[masked] = confidence
                    chosen = _select_most_confident(scores, reveal) & masked  # (B, N)
                tokens = torch.where(chosen, predictions, tokens)
                masked = masked & ~chosen
            revealed_before = revealed_before + reveal
            if return_trace:
                trace_predictions.append(predictions.view(batch, grid, grid))
                trace_masks.append(masked.view(batch, grid, grid).clone())
                trace_revealed.append(reveal.clone())
            if bar is not None:
                bar.update(1)
            elif callable(progress):
                progress(index + 1, total_steps)
    finally:
        transformer.train(was_training)
        if bar is not None:
            bar.close()

    if bool(masked.any()):  # cannot happen: the last step reveals every remaining token
        raise RuntimeError("sampling finished with masked tokens left")
    trace = None
    if return_trace:
        trace = SampleTrace(
            torch.stack(trace_predictions), torch.stack(trace_masks), torch.stack(trace_revealed)
        )
    return SampleResult(tokens=tokens.view(batch, grid, grid), trace=trace)

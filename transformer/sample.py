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
the unconditional half is skipped while ω_t = 0; a sample that reveals nothing at a step stays out
of that step's forward (and a step at which none does runs no forward).

The step itself is `transformer.decode.decode_step`, which also runs rows at different steps with
different knobs in one forward (the Serve deployment's continuous batching); `sample()` starts the
rows (`start_rows`) and calls it `steps - start_step` times.

Dimensions: B batch, h×w token grid, N = h·w, M masked positions in the batch, K codebook size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn

from transformer.config import SamplingConfig
from transformer.decode import decode_step, per_sample_generators, start_rows
from transformer.model import unwrap_model

__all__ = ["ProgressCallback", "SampleResult", "SampleTrace", "per_sample_generators", "sample"]

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
        schedule: how many tokens each step reveals: a masking schedule name (`transformer.masking`;
            "halton" and "arccos-v2" are the v2 samplers' tables). Used with either order.
        temperature: logits are divided by it (> 0). Reference `sm_temp` s = temperature 1/s.
        gumbel_temperature: Gumbel noise scale on log-confidences at the first step (decays to 0).
        cfg_weight: classifier-free guidance weight w (0 = conditional only, one B-sized forward).
        cfg_schedule: "linear" (0 → w, v1 reference) or "constant" (v2 reference).
        order: which tokens a step reveals: "confidence" (v1: the most confident samples) or "halton"
            (v2: the next cells of the Halton permutation; `gumbel_temperature` is unused). Either
            order works with either schedule and either transformer family.
        randomize_order: with order "halton", roll each sample's permutation by an offset drawn
            from its seed.
        temperature_end: None = `temperature` at every step; else the logit multiplier 1/τ moves
            linearly from 1/temperature to 1/temperature_end (v2's `sm_temp_min` → `sm_temp_max`).
        temperature_warmup: the first this-many steps use twice the temperature (v2's warm-up).
        top_k: if > 0, sample among the k most probable codes only.
        init_tokens: optional LongTensor[B, h, w]; codes are kept, `mask_token_id` entries are decoded
            (inpainting / editing). Each sample's schedule spans its own masked count.
        generator: draws the per-sample seeds when `seeds` is not given.
        seeds: one int in [0, MAX_SEED = 2**53) per sample; sample i's result depends only on its
            seed, class and init tokens.
        start_step: begin at this step of a `steps`-step schedule (class-guided editing, JAX
            `start_iter`); `steps - start_step` steps run, with the noise and CFG ramps of the full schedule.
        return_trace: also return the per-step predictions and masks.
        progress: True for a tqdm bar over steps, or a callback `(steps_done, total_steps)`.

    Returns:
        SampleResult(tokens LongTensor[B, h, w], trace or None).
    """
    transformer = unwrap_model(model)
    settings = SamplingConfig(  # validates the knobs, with the same messages as a stored config
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
    rows = start_rows(
        model, class_ids, settings, init_tokens=init_tokens, generator=generator, seeds=seeds,
        start_step=start_step,
    )  # fmt: skip
    batch, grid = len(rows), transformer.config.grid_size
    total_steps = steps - start_step
    trace_predictions, trace_masks, trace_revealed = [], [], []
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, desc="sampling", unit="step")

    was_training = transformer.training
    transformer.eval()
    try:
        for index in range(total_steps):
            step = decode_step(model, rows)
            rows = step.rows
            if return_trace:
                trace_predictions.append(step.predictions.view(batch, grid, grid))
                trace_masks.append(rows.masked.view(batch, grid, grid).clone())
                trace_revealed.append(step.revealed.clone())
            if bar is not None:
                bar.update(1)
            elif callable(progress):
                progress(index + 1, total_steps)
    finally:
        transformer.train(was_training)
        if bar is not None:
            bar.close()

    if bool(rows.masked.any()):  # cannot happen: the last step reveals every remaining token
        raise RuntimeError("sampling finished with masked tokens left")
    trace = None
    if return_trace:
        trace = SampleTrace(
            torch.stack(trace_predictions), torch.stack(trace_masks), torch.stack(trace_revealed)
        )
    return SampleResult(tokens=rows.tokens.view(batch, grid, grid), trace=trace)

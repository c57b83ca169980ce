"""One MaskGIT decoding step over rows that are each at their own step, with their own knobs.

The sampler of docs/reference.md#sampler is this step in a loop: `sample()` starts rows with
`start_rows` and calls `decode_step` until their schedules end. A serving loop
(`generation.ContinuousBatcher`) calls the same step on whatever rows are running: rows of different
requests, at different steps of schedules of different lengths, with different temperatures, Gumbel
scales, guidance weights, orders and top-k, share **one** forward pass per step. A row joins at a
step boundary and leaves when its own schedule ends.

Per row, a step:

1. draws the row's noise for the step (2·N numbers from the row's own generator, always, in a fixed
   order), so a row's result depends only on its seed, class, initial grid and knobs — never on the
   rows it shares forwards with;
2. works out how many tokens the row reveals (its step table, guarded by what is still masked; the
   last step reveals the rest) and which positions it queries: every masked one (order
   "confidence") or the next cells of its Halton order (order "halton");
3. joins the packed forward: its conditional row, plus an unconditional row only while its guidance
   weight ω_t > 0. Rows that reveal nothing this step are left out of the forward;
4. combines ℓ = ℓ_c + ω_t (ℓ_c − ℓ_u), applies its top-k, divides by its temperature τ_t, samples
   every queried position by inverse CDF with its own uniforms and keeps the scheduled number: the
   most confident (log-probability + its Gumbel scale × noise) or the queried Halton cells.

Everything after the forward is row-wise (softmax, cumsum, sampling, top-k values, a stable sort
for the confidence ranking with ties broken by position), so the numbers a row gets do not depend
on the other rows.

Dimensions: B rows, h×w token grid, N = h·w, M queried positions over all rows, K codebook size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from transformer.config import MAX_SEED, SamplingConfig, check_seed
from transformer.halton_order import halton_order
from transformer.masking import tokens_per_step
from transformer.model import unwrap_model


def per_sample_generators(
    batch: int, *, seeds: Sequence[int] | torch.Tensor | None = None, generator: torch.Generator | None = None
) -> list[torch.Generator]:
    """One CPU generator per sample: seeded by `seeds[i]`, or by seeds drawn from `generator`
    (or from torch's global generator when neither is given)."""
    if seeds is not None and generator is not None:
        raise ValueError("give either seeds (one per sample) or generator, not both")
    if seeds is None:
        seeds = torch.randint(0, MAX_SEED, (batch,), generator=generator).tolist()
    seeds = [check_seed(int(seed)) for seed in (seeds.tolist() if isinstance(seeds, torch.Tensor) else seeds)]
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


@dataclass(frozen=True)
class RowPlan:
    """What one row decodes with: its knobs, where its schedule starts, and its step table.

    Attributes:
        sampling: the row's knobs (steps, schedule, temperature, Gumbel, guidance, order, top-k).
        start_step: first global step of the `sampling.steps`-step schedule that runs.
        counts: tokens revealed at each step that runs (`sampling.steps - start_step` entries).
    """

    sampling: SamplingConfig
    start_step: int
    counts: tuple[int, ...]

    @property
    def total_steps(self) -> int:
        return len(self.counts)


@dataclass(frozen=True, eq=False)
class DecodeRows:
    """The decoding state of B rows (one image each), each at its own step.

    Attributes:
        tokens: LongTensor[B, N], decided codes and [MASK] (`mask_token_id`) elsewhere.
        masked: BoolTensor[B, N], positions still to decode.
        class_ids: LongTensor[B].
        halton_rank: LongTensor[B, N], each position's place in the row's Halton order (rows of
            order "confidence" hold zeros).
        generators: each row's noise source.
        plans: each row's knobs and step table.
        steps_done: steps each row has run.
        revealed: tokens each row has revealed so far.
    """

    tokens: torch.Tensor
    masked: torch.Tensor
    class_ids: torch.Tensor
    halton_rank: torch.Tensor
    generators: tuple[torch.Generator, ...]
    plans: tuple[RowPlan, ...]
    steps_done: tuple[int, ...]
    revealed: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.plans)

    @property
    def finished(self) -> list[bool]:
        """Whether each row's schedule has ended (its tokens are final)."""
        return [done >= plan.total_steps for done, plan in zip(self.steps_done, self.plans)]

    def select(self, indices: Sequence[int]) -> DecodeRows:
        """The rows at `indices`, in that order."""
        index = torch.as_tensor(list(indices), dtype=torch.long, device=self.tokens.device)
        return DecodeRows(
            self.tokens[index], self.masked[index], self.class_ids[index], self.halton_rank[index],
            tuple(self.generators[i] for i in indices), tuple(self.plans[i] for i in indices),
            tuple(self.steps_done[i] for i in indices), tuple(self.revealed[i] for i in indices),
        )  # fmt: skip

    @staticmethod
    def concat(parts: Sequence[DecodeRows]) -> DecodeRows:
        """All rows of `parts`, in order (at least one part)."""
        if len(parts) == 1:
            return parts[0]
        return DecodeRows(
            torch.cat([p.tokens for p in parts]), torch.cat([p.masked for p in parts]),
            torch.cat([p.class_ids for p in parts]), torch.cat([p.halton_rank for p in parts]),
            sum((p.generators for p in parts), ()), sum((p.plans for p in parts), ()),
            sum((p.steps_done for p in parts), ()), sum((p.revealed for p in parts), ()),
        )  # fmt: skip


class DecodeStep(NamedTuple):
    """What one `decode_step` did."""

    rows: DecodeRows  # the rows after the step (each one step further)
    predictions: torch.Tensor  # LongTensor[B, N]: decided tokens plus this step's samples where queried
    revealed: torch.Tensor  # LongTensor[B]: tokens each row revealed
    in_forward: torch.Tensor  # BoolTensor[B]: rows that were in the forward pass
    forward_rows: int  # rows of the forward pass (conditional + unconditional); 0 = no forward


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


def _halton_ranks(
    masked: torch.Tensor, grid: int, generators: Sequence[torch.Generator], randomize: bool
) -> torch.Tensor:
    """LongTensor[B, N]: each masked position's place among the row's masked positions in its
    Halton order (rolled by an offset from the row's generator when `randomize`); unmasked
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


def start_rows(
    model: nn.Module,
    class_ids: torch.Tensor | Sequence[int],
    sampling: SamplingConfig,
    *,
    init_tokens: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    seeds: Sequence[int] | torch.Tensor | None = None,
    start_step: int = 0,
) -> DecodeRows:
    """Rows ready to decode: one per class id, all with the knobs `sampling` (rows of different
    knobs are joined with `DecodeRows.concat`).

    Args:
        model: the transformer (any family, possibly wrapped); only its config and device are read.
        class_ids: LongTensor[B] (or a sequence) in [0, num_classes).
        sampling: the knobs.
        init_tokens: optional LongTensor[B, h, w]; codes are kept, [MASK] entries are decoded.
        generator: draws the per-row seeds when `seeds` is not given.
        seeds: one int per row.
        start_step: first step of the `sampling.steps`-step schedule.

    Raises:
        ValueError: a bad input, named (class ids, init tokens, seeds, start step).
    """
    config = unwrap_model(model).config
    steps = sampling.steps
    if not 0 <= start_step < steps:
        raise ValueError(f"start_step must be in [0, steps={steps}), got {start_step}")
    device = next(unwrap_model(model).parameters()).device
    class_ids = _as_class_ids(class_ids, config.num_classes).to(device)
    batch, grid = class_ids.shape[0], config.grid_size
    tokens = _initial_tokens(init_tokens, batch, grid, config.mask_token_id, device)  # (B, N)
    masked = tokens == config.mask_token_id  # (B, N)
    generators = per_sample_generators(batch, seeds=seeds, generator=generator)
    to_reveal = masked.sum(dim=1).tolist()
    # The schedule says how many tokens each step reveals, the order which ones: always the schedule named.
    tables = [tokens_per_step(n, steps, sampling.schedule, start_step=start_step) for n in to_reveal]
    if sampling.order == "halton":
        halton_rank = _halton_ranks(masked, grid, generators, sampling.randomize_order)  # (B, N)
    else:
        halton_rank = torch.zeros_like(tokens)
    plans = tuple(RowPlan(sampling, start_step, tuple(int(c) for c in table)) for table in tables)
    return DecodeRows(
        tokens, masked, class_ids, halton_rank, tuple(generators), plans, (0,) * batch, (0,) * batch
    )


def _draw_noise(generators: Sequence[torch.Generator], num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row uniforms for inverse-CDF sampling and Gumbel(0, 1) noise: two FloatTensor[B, N]."""
    uniforms, gumbels = [], []
    tiny = torch.finfo(torch.float32).tiny
    for generator in generators:
        uniforms.append(torch.rand(num_tokens, generator=generator))
        gumbel_uniform = torch.rand(num_tokens, generator=generator).clamp_min(tiny)
        gumbels.append(-torch.log(-torch.log(gumbel_uniform).clamp_max(-tiny)))
    return torch.stack(uniforms), torch.stack(gumbels)


def _select_most_confident(confidence: torch.Tensor, reveal: torch.Tensor) -> torch.Tensor:
    """BoolTensor[B, N]: exactly `reveal[i]` highest-confidence positions of each row, ties going to
    the lower position (a stable sort, so the choice does not depend on other rows' counts; −inf is
    never chosen unless a row must reveal more finite entries than it has, which the caller rules out)."""
    k = int(reveal.max())
    chosen = torch.zeros_like(confidence, dtype=torch.bool)
    if k == 0:
        return chosen
    top = confidence.argsort(dim=1, descending=True, stable=True)[:, :k]  # (B, k)
    keep = torch.arange(k, device=confidence.device)[None, :] < reveal[:, None]  # (B, k)
    return chosen.scatter_(1, top, keep)


def _per_entry(values: list[float], entry_row: torch.Tensor) -> torch.Tensor:
    """A float32 value per queried position from one value per row: FloatTensor[M]."""
    return torch.tensor(values, dtype=torch.float32, device=entry_row.device)[entry_row]


def _top_k_filter(logits: torch.Tensor, top_ks: torch.Tensor) -> torch.Tensor:
    """Keep each entry's `top_ks[m]` largest logits (0 = all), −inf elsewhere."""
    for k in sorted(set(top_ks.tolist()) - {0}):
        if k >= logits.shape[-1]:
            continue
        rows = top_ks == k
        part = logits[rows]
        kth = part.topk(k, dim=-1).values[:, -1:]  # (m, 1)
        logits[rows] = part.masked_fill(part < kth, -math.inf)
    return logits


@torch.no_grad()
def decode_step(model: nn.Module, rows: DecodeRows) -> DecodeStep:
    """Run one decoding step of every row in `rows` with one forward pass.

    The rows may be at different steps and have different knobs; none may have finished. The
    forward packs the conditional row of every row that reveals something this step and, after
    them, an unconditional row of each such row whose guidance weight at its step is > 0. The
    caller sets eval mode and autocast.

    Args:
        model: the transformer (any family, possibly wrapped: it is called as given).
        rows: the rows to advance (B >= 1), on the model's device.

    Returns:
        DecodeStep(rows one step further, predictions, revealed counts, rows in the forward, forward size).
    """
    config = unwrap_model(model).config
    num_tokens, grid = config.num_tokens, config.grid_size
    if any(rows.finished):
        raise ValueError("decode_step got rows whose schedule has already ended")
    device = rows.tokens.device
    tokens, masked = rows.tokens, rows.masked
    plans = rows.plans
    steps = [plan.start_step + done for plan, done in zip(plans, rows.steps_done)]  # global step per row
    uniforms, gumbels = (noise.to(device) for noise in _draw_noise(rows.generators, num_tokens))  # (B, N)
    remaining = masked.sum(dim=1)  # (B,)
    scheduled = [
        plan.counts[done] if done < plan.total_steps - 1 else num_tokens  # the last step reveals the rest
        for plan, done in zip(plans, rows.steps_done)
    ]
    reveal = torch.minimum(torch.tensor(scheduled, device=device), remaining)  # per-row guard
    predictions = tokens.clone()
    active = reveal > 0  # (B,) rows in the forward
    forward_rows = 0
    chosen = torch.zeros_like(masked)
    if bool(active.any()):
        halton = torch.tensor([plan.sampling.order == "halton" for plan in plans], device=device)  # (B,)
        cursor = torch.tensor(rows.revealed, device=device) + reveal  # (B,) Halton cells done after it
        query = masked & active[:, None]  # every masked position competes on confidence
        query = torch.where(halton[:, None], query & (rows.halton_rank < cursor[:, None]), query)  # (B, N)
        omegas = [
            cfg_weight_at(step, plan.sampling.steps, plan.sampling.cfg_weight, plan.sampling.cfg_schedule)
            for step, plan in zip(steps, plans)
        ]
        guided = active & torch.tensor([omega > 0 for omega in omegas], device=device)  # (B,)
        conditional_rows, unconditional_rows = active.nonzero()[:, 0], guided.nonzero()[:, 0]
        forward_index = torch.cat([conditional_rows, unconditional_rows])  # conditional rows first
        drop = torch.arange(forward_index.numel(), device=device) >= conditional_rows.numel()  # (B_f,)
        forward_rows = int(forward_index.numel())
        logits = model(
            tokens[forward_index].view(-1, grid, grid),
            rows.class_ids[forward_index],
            drop,
            positions=query[forward_index],
        ).float()  # (M + M_u, K)
        entry_row = query.nonzero()[:, 0]  # (M,) row of each queried position, row-major
        queried = int(entry_row.numel())
        logits, unconditional = logits[:queried], logits[queried:]  # (M, K), (M_u, K)
        guided_entry = guided[entry_row]  # (M,)
        if bool(guided_entry.any()):
            omega = _per_entry(omegas, entry_row)[guided_entry][:, None]  # (M_u, 1)
            conditional = logits[guided_entry]
            logits[guided_entry] = conditional + omega * (conditional - unconditional)
        top_ks = torch.tensor([plan.sampling.top_k for plan in plans], device=device)[entry_row]  # (M,)
        logits = _top_k_filter(logits, top_ks)
        taus = [
            temperature_at(step, p.sampling.steps, p.sampling.temperature, p.sampling.temperature_end,
                           p.sampling.temperature_warmup)
            for step, p in zip(steps, plans)
        ]  # fmt: skip
        log_probs = torch.log_softmax(logits / _per_entry(taus, entry_row)[:, None], dim=-1)  # (M, K)
        # Inverse-CDF sampling with the row's own uniforms (batch-independent, unlike multinomial).
        cdf = log_probs.exp().cumsum(dim=-1)  # (M, K)
        target = uniforms[query][:, None] * cdf[:, -1:]  # (M, 1)
        sampled = torch.searchsorted(cdf, target, right=True).clamp_max(config.codebook_size - 1)  # (M, 1)
        predictions[query] = sampled.squeeze(1)
        chosen = query & halton[:, None]  # Halton rows keep every queried cell
        by_confidence = active & ~halton  # (B,)
        if bool(by_confidence.any()):
            scales = [
                gumbel_scale_at(step, plan.sampling.steps, plan.sampling.gumbel_temperature)
                for step, plan in zip(steps, plans)
            ]
            confidence = log_probs.gather(1, sampled).squeeze(1)  # (M,)
            confidence = confidence + _per_entry(scales, entry_row) * gumbels[query]
            # Finite, so a masked position always outranks the −inf of decided ones.
            confidence = confidence.clamp_min(torch.finfo(torch.float32).min)
            scores = torch.full(masked.shape, -math.inf, device=device)  # (B, N)
            scores[query & by_confidence[:, None]] = confidence[by_confidence[entry_row]]
            picked = _select_most_confident(scores, torch.where(by_confidence, reveal, 0)) & masked
            chosen = chosen | picked
        tokens = torch.where(chosen, predictions, tokens)
        masked = masked & ~chosen
    after = DecodeRows(
        tokens, masked, rows.class_ids, rows.halton_rank, rows.generators, plans,
        tuple(done + 1 for done in rows.steps_done),
        tuple(before + int(count) for before, count in zip(rows.revealed, reveal.tolist())),
    )  # fmt: skip
    return DecodeStep(after, predictions, reveal, active, forward_rows)

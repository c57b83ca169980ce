"""Step-level continuous batching (`generation.ContinuousBatcher`, `jobs.serve.continuous`), no Ray.

The claim: a request gives the same tokens and pixels whether it ran alone or shared its forward
passes with any mix of other requests (other step counts, schedules, temperatures, Gumbel scales,
guidance weights and schedules, orders, top-k, seeds, generation and inpainting), joining at any
step boundary. The tests count the rows of every forward pass, so they cannot pass without sharing.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from generation import MaskGIT, box_to_token_region
from generation.continuous import ContinuousBatcher, SamplingRequest
from jobs.serve.continuous import ContinuousSampler
from jobs.serve.engine import JobFailure, JobOutput, SampleJob, SamplerEngine, StepEvent
from tokenizer import VQGAN, preset, save_vqgan
from transformer import MaskTransformer, SamplingConfig, TransformerConfig, save_transformer
from transformer.config import HaltonConfig
from transformer.halton import HaltonTransformer

BASE = SamplingConfig()
BOX = (8, 4, 12, 16)  # pixels (top, left, height, width) of the 32×32 image


class Counting(nn.Module):
    """Wraps the transformer like an engine (`.module`) and records the rows of every forward pass."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.rows: list[int] = []

    def forward(self, tokens, class_ids, drop_label=None, **kwargs):
        self.rows.append(int(tokens.shape[0]))
        return self.module(tokens, class_ids, drop_label, **kwargs)


def _vqgan() -> VQGAN:
    torch.manual_seed(0)
    return VQGAN(preset("tiny-f4")).eval()  # 32 px, 8×8 tokens, 256 codes


def _transformer(family: str, codebook_size: int) -> nn.Module:
    torch.manual_seed(1)
    if family == "v2":
        config = HaltonConfig(
            codebook_size=codebook_size, grid_size=8, num_classes=10, hidden_size=32, depth=2, num_heads=4,
            mlp_size=128,
        )  # fmt: skip
        model = HaltonTransformer(config)
        with torch.no_grad():  # away from the all-zero adaLN init, so the class and the tokens matter
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.05)
        return model.eval()
    config = TransformerConfig(
        codebook_size=codebook_size, grid_size=8, num_classes=10, hidden_size=32, depth=2, num_heads=4,
        mlp_size=64, dropout=0.0,
    )  # fmt: skip
    model = MaskTransformer(config)
    with torch.no_grad():
        model.bias.normal_(0, 2.0)  # sharper, position-dependent distributions than a fresh model's
    return model.eval()


@pytest.fixture(scope="module", params=["v1", "v2"])
def pipe(request) -> MaskGIT:
    vqgan = _vqgan()
    return MaskGIT(Counting(_transformer(request.param, vqgan.config.codebook_size)), vqgan)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    generator = np.random.default_rng(0)
    smooth = generator.integers(0, 256, (4, 4, 3)).repeat(8, axis=0).repeat(8, axis=1)
    return smooth.astype(np.uint8)  # (32, 32, 3)


def _requests(image: np.ndarray, pipe: MaskGIT) -> list[SamplingRequest]:
    """A mix of everything that may differ between rows sharing a forward pass."""
    region = box_to_token_region(BOX, pipe.image_size, pipe.downsample_factor, margin=1)
    return [
        SamplingRequest((1, 2), (10, 11), replace(BASE, steps=3, cfg_weight=0.0)),
        SamplingRequest(
            (3,), (12,), replace(BASE, steps=5, schedule="cosine", temperature=0.7, gumbel_temperature=2.0)
        ),
        SamplingRequest(
            (4, 5, 6),
            (13, 14, 15),
            replace(
                BASE,
                steps=8,
                order="halton",
                cfg_weight=1.5,
                cfg_schedule="constant",
                temperature_warmup=1,
                randomize_order=True,
                gumbel_temperature=0.0,
            ),
        ),
        SamplingRequest(
            (7, 7), (16, 17), replace(BASE, steps=4, cfg_weight=1.0, top_k=20), image=image, region=region
        ),
        SamplingRequest(
            (8,),
            (18,),
            replace(BASE, steps=6, schedule="jax-cosine", temperature_end=0.5),
            start_step=2,
            decode=False,
        ),
        SamplingRequest((9,), (19,), replace(BASE, steps=8, order="halton", cfg_weight=0.0, top_k=5)),
        SamplingRequest((0, 3), (20, 21), replace(BASE, steps=5, gumbel_temperature=0.0, cfg_weight=4.0)),
    ]


def _alone(pipe: MaskGIT, request: SamplingRequest) -> tuple[torch.Tensor, np.ndarray | None]:
    """The request through the one-call path (`MaskGIT.generate` / `inpaint`, i.e. `sample()`)."""
    if request.image is not None:
        edit = pipe.inpaint(
            request.image, class_id=request.class_ids[0], box=BOX, count=request.num_images,
            seeds=request.seeds, sampling=request.sampling, start_step=request.start_step,
        )  # fmt: skip
        return edit.tokens, edit.images
    out = pipe.generate(
        request.class_ids, seeds=request.seeds, sampling=request.sampling, start_step=request.start_step
    )
    return out.tokens, (out.images if request.decode else None)


def _run(batcher: ContinuousBatcher, requests: list, arrivals: list[int]) -> list:
    """Submit request i before step `arrivals[i]` (0 = before the first), then step until idle."""
    tickets: list = [None] * len(requests)
    step = 0
    while any(t is None for t in tickets) or batcher.busy:
        for index, arrival in enumerate(arrivals):
            if arrival == step and tickets[index] is None:
                tickets[index] = batcher.submit(requests[index])
        batcher.step()
        step += 1
    return tickets


@pytest.mark.parametrize(
    ("arrivals", "max_rows"),
    [([0, 0, 1, 1, 2, 4, 5], 64), ([6, 3, 0, 2, 2, 0, 1], 64), ([0] * 7, 6)],
    ids=["staggered", "reversed", "queued-under-budget"],
)
def test_a_request_gives_the_same_images_alone_or_sharing_forwards(pipe, image, arrivals, max_rows):
    requests = _requests(image, pipe)
    expected = [_alone(pipe, request) for request in requests]
    counting = pipe.transformer
    counting.rows.clear()
    batcher = ContinuousBatcher(pipe, max_rows=max_rows)
    tickets = _run(batcher, requests, arrivals)
    for index, (ticket, (tokens, images)) in enumerate(zip(tickets, expected)):
        assert ticket.error is None and ticket.outcome is not None, f"request {index}: {ticket.error}"
        assert torch.equal(ticket.outcome.tokens, tokens), f"request {index}: tokens changed when sharing"
        if images is None:
            assert ticket.outcome.images is None
        else:
            np.testing.assert_array_equal(ticket.outcome.images, images, err_msg=f"request {index}")
    # Not vacuous: one forward per step, fewer than alone, rows of several requests in them, in budget.
    alone_forwards = sum(r.sampling.steps - r.start_step for r in requests)
    assert len(counting.rows) == batcher.forwards < alone_forwards
    assert max(counting.rows) <= max_rows
    shared = [t.outcome.shared_rows > t.request.num_images for t in tickets]
    if max_rows >= sum(r.cost for r in requests):
        assert max(counting.rows) > max(r.cost for r in requests) and all(shared)
    else:  # the budget queues some; the one filling it alone (cost 6) runs by itself
        assert sum(shared) >= len(requests) - 1


def test_previews_follow_every_step(pipe):
    request = SamplingRequest((2, 5), (3, 4), replace(BASE, steps=6, cfg_weight=2.0), preview_images=True)
    other = SamplingRequest((1,), (9,), replace(BASE, steps=3, order="halton", gumbel_temperature=0.0))
    seen = []
    batcher = ContinuousBatcher(pipe)
    ticket = batcher.submit(request, on_step=lambda t, preview: seen.append(preview))
    batcher.step()
    batcher.submit(other)
    batcher.run_until_idle()
    assert [(p.step, p.total_steps) for p in seen] == [(i, 6) for i in range(1, 7)]
    still = [int(p.masked.sum()) for p in seen]
    assert still == sorted(still, reverse=True) and still[-1] == 0 and still[0] < 2 * 64
    for preview in seen:
        assert preview.predictions.shape == (2, 8, 8) and preview.images.shape == (2, 32, 32, 3)
        assert int(preview.predictions.max()) < pipe.config.codebook_size  # predictions fill every position
    assert torch.equal(seen[-1].predictions, ticket.outcome.tokens)
    np.testing.assert_array_equal(seen[-1].images, ticket.outcome.images)


def test_cancelled_requests_stop_using_rows(pipe):
    counting = pipe.transformer
    long = SamplingRequest((1, 2, 3, 4), (1, 2, 3, 4), replace(BASE, steps=8, cfg_weight=0.0))
    kept = SamplingRequest((5,), (5,), replace(BASE, steps=6, cfg_weight=0.0))
    never = SamplingRequest((6,), (6,), replace(BASE, steps=4, cfg_weight=0.0))
    done = []
    batcher = ContinuousBatcher(pipe, max_rows=5)
    first = batcher.submit(long, on_done=done.append)
    second = batcher.submit(kept)
    queued = batcher.submit(never, on_done=done.append)  # does not fit beside the other two: waits
    counting.rows.clear()
    batcher.step()
    batcher.step()
    assert counting.rows == [5, 5] and batcher.queued == 1
    first.cancel()
    queued.cancel()
    assert done == [first, queued] and first.done and first.outcome is None
    report = batcher.step()
    assert counting.rows[-1] == 1 and report.rows == 1  # only `kept` is left; `never` never started
    batcher.run_until_idle()
    assert set(counting.rows[2:]) == {1} and queued.outcome is None and not batcher.busy
    assert torch.equal(second.outcome.tokens, _alone(pipe, kept)[0])


def test_budget_is_respected_and_waiting_requests_go_first_in_first_out(pipe):
    counting = pipe.transformer
    costs = {"a": (2, 0.0), "b": (1, 1.0), "c": (3, 0.0), "d": (1, 0.0)}  # images, guidance
    requests = {
        name: SamplingRequest((1,) * n, tuple(range(n)), replace(BASE, steps=3, cfg_weight=w))
        for name, (n, w) in costs.items()
    }
    assert [r.cost for r in requests.values()] == [2, 2, 3, 1]
    batcher = ContinuousBatcher(pipe, max_rows=5)
    tickets = {name: batcher.submit(request) for name, request in requests.items()}
    counting.rows.clear()
    batcher.run_until_idle()
    assert max(counting.rows) <= 5
    # c (3 rows) waits for a and b; d (1 row) would fit beside them but does not overtake c.
    assert tickets["a"].outcome.shared_rows == 3 and tickets["d"].outcome.shared_rows == 4
    with pytest.raises(ValueError, match=r"needs 6 rows per forward pass .* at most 5"):
        batcher.submit(SamplingRequest((1,) * 3, (0, 1, 2), replace(BASE, cfg_weight=1.0)))


def test_a_bad_request_fails_alone_at_submit(pipe, image):
    batcher = ContinuousBatcher(pipe)
    good = batcher.submit(SamplingRequest((1,), (3,), replace(BASE, steps=3)))
    with pytest.raises(ValueError, match=r"class ids must be in \[0, 10\)"):
        batcher.submit(SamplingRequest((1, 12), (4, 5), BASE))
    with pytest.raises(ValueError, match=r"region must be \(8, 8\) tokens"):
        batcher.submit(SamplingRequest((1,), (4,), BASE, image=image, region=np.ones((4, 4), bool)))
    with pytest.raises(ValueError, match="start_step"):
        batcher.submit(SamplingRequest((1,), (4,), replace(BASE, steps=3), start_step=3))
    batcher.run_until_idle()
    assert torch.equal(good.outcome.tokens, pipe.generate([1], seeds=[3], sampling={"steps": 3}).tokens)


# ---------------------------------------------------------------------------------------------------
# The asyncio driver of the Serve deployment


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> SamplerEngine:
    root = tmp_path_factory.mktemp("continuous_models")
    vqgan = _vqgan()
    save_vqgan(vqgan, root / "tokenizer")
    save_transformer(_transformer("v1", vqgan.config.codebook_size), root / "transformer", sampling=BASE)
    return SamplerEngine(str(root / "transformer"), str(root / "tokenizer"), device="cpu")


def test_async_run_and_stream_match_the_merge_path_and_cancel_frees_rows(engine, image):
    region = box_to_token_region(BOX, 32, 4, margin=1)
    jobs = [
        SampleJob("generate", (1, 2), (7, 8), replace(BASE, steps=4)),
        SampleJob("generate", (3,), (9,), replace(BASE, steps=6, cfg_weight=0.0), "tokens"),
        SampleJob("inpaint", (4, 4), (1, 2), replace(BASE, steps=5, order="halton"), "png", image, region),
    ]
    merged = [engine.run([job])[0] for job in jobs]  # the merge path, each job alone

    async def scenario():
        sampler = ContinuousSampler(engine, max_rows=16)
        slow = asyncio.ensure_future(
            sampler.run(SampleJob("generate", (5,) * 4, (0, 1, 2, 3), replace(BASE, steps=40)))
        )
        outputs = asyncio.gather(*(sampler.run(job) for job in jobs[:2]))
        events = [event async for event in sampler.stream(jobs[2], "images")]
        outputs = await outputs
        assert not slow.done() and sampler.batcher.running == 1
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        bad = await sampler.run(SampleJob("generate", (1, 12), (1, 2), BASE))
        await asyncio.sleep(0.05)  # a step boundary: the cancelled rows leave
        return outputs, events, bad, sampler.batcher

    outputs, events, bad, batcher = asyncio.run(scenario())
    for output, expected in zip([*outputs, events[-1]], merged):
        assert isinstance(output, JobOutput)
        assert output.pngs == expected.pngs  # byte-identical PNGs
        if expected.tokens is not None:
            np.testing.assert_array_equal(output.tokens, expected.tokens)
    steps = [event for event in events if isinstance(event, StepEvent)]
    assert [(e.step, e.total_steps) for e in steps] == [(i, 5) for i in range(1, 6)]
    assert all(len(e.pngs) == 2 and e.tokens.shape == (2, 8, 8) for e in steps)
    assert max(output.batch_images for output in outputs) > 2  # they shared forwards with others
    assert isinstance(bad, JobFailure) and bad.client_error and "class ids must be in" in bad.message
    assert not batcher.busy and batcher.forwards < 30  # the 40-step job stopped when cancelled

"""Helpers shared by the Serve test modules: a tiny trained model pair and the app in a local Ray.

Each module that talks HTTP starts the app once (`serve_app`, module scope in the caller) on a free
port of 127.0.0.1, in a Ray cluster of the test process, and shuts both down afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from pipeline.images import to_model_input
from tokenizer import VQGAN, preset, save_vqgan
from transformer import (
    MaskTransformer,
    SamplingConfig,
    TransformerConfig,
    masked_token_loss,
    save_transformer,
)

TINY_SAMPLING = SamplingConfig(steps=4, gumbel_temperature=1.0, cfg_weight=1.0)


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_tiny_models(
    root: Path,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    steps: int = 150,
    sampling: SamplingConfig = TINY_SAMPLING,
    class_names: Sequence[str] | None = None,
) -> SimpleNamespace:
    """A random-init tiny VQGAN (f = 4) and a tiny transformer trained `steps` steps on its tokens of
    `images` (N, 32, 32, 3) uint8 with `labels`, saved in our folder formats under `root`.

    Returns:
        namespace with `transformer`, `tokenizer` (folder paths), `root`, `images`, `losses`.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on two shared cores are several times slower here
    try:
        torch.manual_seed(0)
        vqgan = VQGAN(preset("tiny-f4")).eval()
        with torch.no_grad():
            tokens = vqgan.encode_to_indices(to_model_input(images))  # (N, 8, 8)
        config = TransformerConfig(
            codebook_size=vqgan.config.codebook_size, grid_size=tokens.shape[-1], num_classes=10,
            hidden_size=64, depth=2, num_heads=4, mlp_size=256, dropout=0.0,
        )  # fmt: skip
        model = MaskTransformer(config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
        generator = torch.Generator().manual_seed(0)
        class_ids = torch.as_tensor(labels)
        losses = []
        for _ in range(steps):
            index = torch.randint(0, len(tokens), (32,), generator=generator)
            loss = masked_token_loss(model, tokens[index], class_ids[index], generator=generator).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    save_vqgan(vqgan, root / "tokenizer")
    save_transformer(model.eval(), root / "transformer", sampling=sampling, class_names=class_names)
    return SimpleNamespace(
        transformer=str(root / "transformer"), tokenizer=str(root / "tokenizer"), root=root, images=images,
        losses=losses,
    )  # fmt: skip


@contextlib.contextmanager
def serve_app(options) -> Iterator[str]:
    """`start_server(options)` in a local Ray cluster of this process (2 CPUs); yields the base URL.

    Args:
        options: a `jobs.serve.schema.ServeOptions` (use `free_port()` for its port).
    """
    import ray

    from jobs.serve.app import start_server, stop_server

    temp_dir = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # Ray's socket paths must stay short
    for attempt in range(2):
        try:
            ray.init(
                address="local", num_cpus=2, num_gpus=0, include_dashboard=False, _temp_dir=temp_dir,
                logging_level=logging.WARNING,
            )  # fmt: skip
            break
        except Exception as error:  # Ray gives its raylet a fixed 30 s to start: once more on a busy machine
            ray.shutdown()
            if attempt or "timed out during startup" not in str(error):
                raise
    try:
        yield start_server(options)
    finally:
        stop_server()
        shutil.rmtree(temp_dir, ignore_errors=True)


@contextlib.contextmanager
def local_app(app) -> Iterator[str]:
    """An ASGI `app` (the ingress's FastAPI app, without Ray) served by uvicorn on a free port of
    127.0.0.1 from a thread of this process; yields its base URL."""
    import threading
    import time

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def sse_events(reply) -> list[tuple[str, dict]]:
    """(event, data) of a text/event-stream answer (a `requests.Response`), in order."""
    import json

    events = []
    for block in reply.text.replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return events

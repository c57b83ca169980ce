"""The CUDA paths, run by `scripts/gpu_check.sh` on a machine with a GPU (skipped everywhere else).

Each test runs a real piece of the pipeline on the GPU in bf16 and checks it against what the CPU path
guarantees: the sampler and the tokenizer, the tokenize stage's callable (what a Ray actor runs), the
Serve engine (what a replica runs), a one-GPU DeepSpeed step over NCCL, and — where Ray is installed —
a tokenize actor and a Serve replica scheduled on the GPU by Ray itself.
"""

from __future__ import annotations

import importlib.util
import os
import socket

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh)"),
]


def _needs(module: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(importlib.util.find_spec(module) is None, reason=f"{module} is not installed")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from tokenizer import VQGAN, preset, save_vqgan
    from transformer import MaskTransformer, SamplingConfig, TransformerConfig, save_transformer

    root = tmp_path_factory.mktemp("gpu")
    torch.manual_seed(0)
    vqgan = VQGAN(preset("tiny-f4"))
    save_vqgan(vqgan, root / "tokenizer")
    config = TransformerConfig(
        codebook_size=vqgan.config.codebook_size, grid_size=8, num_classes=10, hidden_size=64, depth=2,
        num_heads=4, mlp_size=128, dropout=0.0,
    )  # fmt: skip
    save_transformer(MaskTransformer(config), root / "transformer", sampling=SamplingConfig(steps=4))
    return root


def test_generation_on_cuda_in_bf16(folders, fashion_mnist_small):
    from generation import MaskGIT

    pipe = MaskGIT.load(str(folders / "transformer"), str(folders / "tokenizer"), device="cuda", bf16=True)
    assert pipe.device.type == "cuda"
    first = pipe.generate([0, 3, 7, 9], seeds=11)
    again = pipe.generate([0, 3, 7, 9], seeds=11, batch_size=1)
    assert first.images.shape == (4, 32, 32, 3) and first.images.dtype == np.uint8
    # Per-image seeds hold on the GPU too, but cuBLAS does not promise a row's bf16 result is the same
    # at batch 4 and batch 1 (other kernels, other summation orders), and a logit near a tie can then
    # flip a sampled token that later steps build on. On the CPU this is asserted exactly
    # (tests/test_generation.py); here most tokens must agree.
    assert (first.tokens == again.tokens).float().mean() >= 0.75
    image = fashion_mnist_small[0][0]
    edit = pipe.inpaint(image, class_id=2, box=(8, 8, 8, 8), count=2, seeds=1)
    outside = ~torch.from_numpy(edit.region)
    known = pipe.encode(image[None])[0].cpu()
    assert torch.equal(edit.tokens[0][outside], known[outside])


def test_tokenizer_bf16_on_cuda_matches_fp32_on_cpu(folders, fashion_mnist_small):
    from pipeline.images import to_model_input
    from tokenizer import load_vqgan

    images = to_model_input(fashion_mnist_small[0][:64])
    cpu = load_vqgan(folders / "tokenizer").encode_to_indices(images)
    gpu_model = load_vqgan(folders / "tokenizer", map_location="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        gpu = gpu_model.encode_to_indices(images.cuda()).cpu()
    assert (gpu == cpu).float().mean() > 0.9  # bf16 may flip near-ties of the nearest code


def test_tokenize_stage_on_cuda(folders, fashion_mnist_small):
    from pipeline.tokenize import TokenizeBatch

    stage = TokenizeBatch(str(folders / "tokenizer"), device="cuda", flip=True)
    batch = stage({"images": fashion_mnist_small[0][:16], "labels": fashion_mnist_small[1][:16]})
    assert batch["tokens"].shape == (16, 2, 8, 8) and batch["tokens"].dtype == np.uint16
    np.testing.assert_array_equal(batch["labels"], fashion_mnist_small[1][:16])


def test_serve_engine_on_cuda(folders):
    from jobs.serve.engine import SampleJob, SamplerEngine
    from transformer import SamplingConfig

    engine = SamplerEngine(str(folders / "transformer"), str(folders / "tokenizer"), device="cuda",
                           autocast_bf16=True)  # fmt: skip
    assert engine.info()["device"].startswith("cuda")
    job = SampleJob("generate", (1, 2), (5, 6), SamplingConfig(steps=4))
    output = engine.run([job])[0]
    assert len(output.pngs) == 2 and output.pngs[0][:4] == b"\x89PNG"


@_needs("deepspeed")
def test_one_gpu_deepspeed_step_over_nccl(tmp_path):
    """ZeRO-2 in bf16 on one GPU: the process group is NCCL, the loss is finite and the weights move."""
    import torch.distributed as dist

    from jobs.train.config import TrainJobConfig
    from jobs.train.worker import build_engine, init_deepspeed_distributed, model_config_for, optimizer_step

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1",
                      LOCAL_RANK="0")  # fmt: skip
    config = TrainJobConfig(
        store="unused", out=str(tmp_path), preset="tiny", zero_stage=2, precision="bf16", use_gpu=True,
        num_workers=1, global_batch_size=8, micro_batch_size=8, steps=2,
        model_overrides={"codebook_size": 256, "grid_size": 8, "num_classes": 10, "depth": 2},
    )  # fmt: skip
    init_deepspeed_distributed(use_gpu=True)
    try:
        assert dist.get_backend() == "nccl"
        engine = build_engine(config, model_config_for(config))
        before = [p.detach().float().clone() for p in engine.module.parameters()]
        generator = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, 256, (8, 8, 8), generator=generator)
        labels = torch.randint(0, 10, (8,), generator=generator)
        model_config = model_config_for(config)
        loss, _, _ = optimizer_step(engine, tokens.cuda(), labels.cuda(), config=config,
                                    mask_token_id=model_config.mask_token_id, step=1, rank=0)  # fmt: skip
        assert np.isfinite(loss)
        after = list(engine.module.parameters())
        assert any(not torch.equal(a.detach().float(), b) for a, b in zip(after, before))
    finally:
        dist.destroy_process_group()


@_needs("ray")
def test_ray_schedules_a_tokenize_actor_on_the_gpu(folders, fashion_mnist_small, tmp_path):
    import ray

    from demo.example_data import write_image_folder
    from jobs.tokenize import TokenizeOptions, run_tokenize
    from pipeline.store import open_token_store

    images, labels = fashion_mnist_small
    folder = write_image_folder(images[:64], labels[:64], tmp_path / "images")
    ray.init(address="local", num_gpus=1, include_dashboard=False)
    try:
        options = TokenizeOptions(input=str(folder), output=str(tmp_path / "store"),
                                  tokenizer=str(folders / "tokenizer"), resolution=32, shard_size=32,
                                  num_gpus_per_actor=1, progress=False)  # fmt: skip
        summary = run_tokenize(options)
    finally:
        ray.shutdown()
    assert open_token_store(str(tmp_path / "store")).manifest.num_samples == 64
    assert summary.devices == ("cuda:0",)  # the actor Ray placed on the GPU encoded there


@_needs("ray")
def test_ray_schedules_a_serve_replica_on_the_gpu(folders):
    import ray
    import requests

    from jobs.serve.app import start_server, stop_server
    from jobs.serve.schema import ServeOptions

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ray.init(address="local", num_gpus=1, include_dashboard=False)
    try:
        options = ServeOptions(transformer=str(folders / "transformer"), tokenizer=str(folders / "tokenizer"),
                               port=port, num_gpus=1, device="cuda", autocast_bf16=True)  # fmt: skip
        url = start_server(options)
        (card,) = requests.get(f"{url}/v1/models", timeout=60).json()["data"]
        model = requests.get(f"{url}/v1/models/{card['id']}", timeout=60).json()
        assert "cuda" in model["device"]
        reply = requests.post(f"{url}/v1/generate", json={"class_id": 3, "seed": 1}, timeout=120)
        assert reply.status_code == 200, reply.text
    finally:
        stop_server()
        ray.shutdown()

"""bf16 in the DeepSpeed config is autocast over fp32 weights: one engine step equals a plain
`torch.autocast(bfloat16)` AdamW step (the reference-style loop) on the same model and batch.

A real world-size-1 DeepSpeed engine over gloo in this process; no Ray.
"""

from __future__ import annotations

import socket

import pytest
import torch

from jobs.train.config import TrainJobConfig
from jobs.train.deepspeed_config import OptimizerSettings, build_deepspeed_config

pytestmark = pytest.mark.deepspeed


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_bf16_config_is_autocast_over_fp32_weights_not_the_bf16_section():
    config = build_deepspeed_config(micro_batch_size=4, precision="bf16")
    assert "bf16" not in config and "fp16" not in config
    assert config["torch_autocast"] == {
        "enabled": True,
        "dtype": "bfloat16",
        "lower_precision_safe_modules": [],
    }
    assert build_deepspeed_config(micro_batch_size=4)["torch_autocast"]["enabled"] is False
    with pytest.raises(ValueError, match="fp16"):
        build_deepspeed_config(micro_batch_size=4, precision="fp16")


@pytest.fixture()
def process_group(monkeypatch):
    import torch.distributed as dist

    from jobs.train.worker import _quiet_worker_warnings, init_deepspeed_distributed

    if dist.is_initialized():
        pytest.skip("a process group already exists in this test process")
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0", "WORLD_SIZE": "1"}
    for key, value in {**env, "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    _quiet_worker_warnings()
    init_deepspeed_distributed(use_gpu=False)
    yield
    dist.destroy_process_group()


def test_deepspeed_bf16_step_equals_a_plain_autocast_adamw_step(process_group):
    from jobs.train.worker import _seeded, build_engine, model_config_for, optimizer_step
    from transformer.model import MaskTransformer
    from transformer.objective import masked_token_loss

    config = TrainJobConfig(
        store="unused",
        out="unused",
        preset="tiny",
        model_overrides={"depth": 2},
        num_workers=1,
        precision="bf16",
        global_batch_size=4,
        micro_batch_size=4,
        steps=2,
        optimizer=OptimizerSettings(lr=1e-3),
    )
    model_config = model_config_for(config)
    engine = build_engine(config, model_config)
    assert all(p.dtype == torch.float32 for p in engine.module.parameters())

    torch.manual_seed(config.seed)  # build_engine's initialisation
    plain = MaskTransformer(model_config)
    start = {name: p.detach().clone() for name, p in plain.named_parameters()}
    for name, p in engine.module.named_parameters():
        torch.testing.assert_close(p.detach(), start[name])
    settings = config.optimizer
    optimizer = torch.optim.AdamW(
        plain.parameters(), lr=settings.lr, betas=settings.betas, weight_decay=settings.weight_decay
    )

    def plain_loss(model, tokens, labels, step: int) -> torch.Tensor:
        return masked_token_loss(
            model,
            tokens,
            labels,
            generator=_seeded(config, step, 0, torch.device("cpu")),
            schedule=config.schedule,
            mask_mode=config.mask_mode,
            loss_on=config.loss_on,
            label_smoothing=config.label_smoothing,
            label_drop=config.label_drop,
            mask_token_id=model_config.mask_token_id,
        ).loss

    generator = torch.Generator().manual_seed(7)
    losses = []
    grid = model_config.grid_size
    for step in range(2):
        tokens = torch.randint(0, model_config.codebook_size, (4, grid, grid), generator=generator)
        labels = torch.randint(0, model_config.num_classes, (4,), generator=generator)
        ds_loss, _, _ = optimizer_step(
            engine, tokens, labels, config=config, mask_token_id=model_config.mask_token_id, step=step, rank=0
        )
        with torch.no_grad():
            fp32_loss = float(plain_loss(plain, tokens, labels, step))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = plain_loss(plain, tokens, labels, step)
        losses.append((ds_loss, fp32_loss))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), settings.grad_clip)
        optimizer.step()
        assert ds_loss == pytest.approx(float(loss.detach()), rel=1e-5, abs=1e-6)

    for name, p in engine.module.named_parameters():
        delta_plain = dict(plain.named_parameters())[name].detach() - start[name]
        torch.testing.assert_close(p.detach() - start[name], delta_plain, rtol=2e-3, atol=2e-6)
        assert p.dtype == torch.float32
    # and bf16 is really on: the same first step without autocast gives another loss
    assert abs(losses[0][0] - losses[0][1]) > 1e-4 * abs(losses[0][1])

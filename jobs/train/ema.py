"""Exponential moving average of the weights of a DeepSpeed engine, for every ZeRO stage.

Under ZeRO-1/2 every rank holds the full parameters, so each rank keeps a full fp32 EMA. Under ZeRO-3 a
rank holds only its partition of each parameter (`param.ds_tensor`), so the EMA is kept per partition
and gathered only when a checkpoint or an export needs the full weights. The consolidated EMA is what
checkpoints store, which makes it independent of the world size on resume.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _is_partitioned(param: torch.nn.Parameter) -> bool:
    return hasattr(param, "ds_tensor")


def _local_view(param: torch.nn.Parameter) -> torch.Tensor:
    """The data this rank owns: the ZeRO-3 partition, or the whole parameter."""
    return param.ds_tensor if _is_partitioned(param) else param.data


class WeightEMA:
    """EMA of a (possibly ZeRO-3-partitioned) module's parameters, in fp32.

    Args:
        module: the engine's module (`engine.module`).
        decay: EMA decay per optimizer step, e.g. 0.9999.
    """

    def __init__(self, module: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.params = dict(module.named_parameters())
        self.shadow = {name: _local_view(p).detach().float().clone() for name, p in self.params.items()}

    @torch.no_grad()
    def update(self) -> None:
        for name, param in self.params.items():
            self.shadow[name].lerp_(_local_view(param).float(), 1.0 - self.decay)

    @torch.no_grad()
    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The consolidated EMA weights; a collective under ZeRO-3 (every rank must call it)."""
        full = {}
        for name, param in self.params.items():
            local = self.shadow[name]
            if not _is_partitioned(param):
                full[name] = local.clone()
                continue
            world = dist.get_world_size()
            pieces = [torch.empty_like(local) for _ in range(world)]
            dist.all_gather(pieces, local)
            flat = torch.cat(pieces)[: param.ds_numel]
            full[name] = flat.view(param.ds_shape).clone()
        return full

    @torch.no_grad()
    def load_full_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore from consolidated weights (any world size): each rank keeps its own partition."""
        missing = sorted(set(self.params) - set(state))
        if missing:
            raise ValueError(f"EMA state lacks parameters: {', '.join(missing[:5])}")
        for name, param in self.params.items():
            tensor = state[name].float()
            if not _is_partitioned(param):
                self.shadow[name].copy_(tensor.view_as(self.shadow[name]))
                continue
            size = self.shadow[name].numel()
            start = dist.get_rank() * size
            flat = torch.zeros(size * dist.get_world_size(), dtype=torch.float32)
            flat[: param.ds_numel] = tensor.flatten()
            self.shadow[name].copy_(flat[start : start + size])

"""Codebook usage: how many codes a tokenizer uses, and restarting the codes it never uses.

Usage is reported as the fraction of the K codes that occur at least once and the perplexity
exp(H(p)) of the code histogram p (K for perfectly uniform use, 1 for a single code).

Dead-code restart (not in taming; common practice since Jukebox/SoundStream, Dhariwal et al. 2020,
Zeghidour et al. 2021): every `interval` steps, codes that were not chosen once during the interval
are re-initialised to randomly picked encoder outputs of the current batch, so they land where data is.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from tokenizer.vqgan import VectorQuantizer


class CodebookUsage(NamedTuple):
    """Fraction of codes used (0..1) and perplexity exp(entropy) of the code histogram (1..K)."""

    fraction_used: float
    perplexity: float


def usage_from_counts(counts: torch.Tensor) -> CodebookUsage:
    """(K,) code counts -> CodebookUsage."""
    counts = counts.double()
    total = counts.sum()
    if total <= 0:
        return CodebookUsage(0.0, 0.0)
    p = counts / total
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return CodebookUsage(float((counts > 0).double().mean()), float(entropy.exp()))


def code_counts(indices: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """(any shape) int code ids -> (K,) int64 occurrence counts."""
    return torch.bincount(indices.reshape(-1).long(), minlength=codebook_size)


class DeadCodeRestarter:
    """Counts code use between restarts and re-seeds unused codes from encoder outputs.

    Args:
        codebook_size: K.
        interval: steps between restarts (each restart looks at the counts of that interval).
    """

    def __init__(self, codebook_size: int, interval: int):
        if interval <= 0:
            raise ValueError(f"dead-code restart interval must be positive, got {interval}")
        self.interval = interval
        self.counts = torch.zeros(codebook_size, dtype=torch.long)

    def observe(self, indices: torch.Tensor) -> None:
        """Add the codes chosen in one batch ((B, h, w) ids)."""
        self.counts += code_counts(indices.detach().cpu(), self.counts.numel())

    @torch.no_grad()
    def maybe_restart(self, step: int, quantizer: VectorQuantizer, latents: torch.Tensor) -> int:
        """At every `interval`-th step, re-seed unused codes; returns how many were restarted.

        Args:
            step: steps completed so far.
            quantizer: its `embedding.weight` rows of dead codes are overwritten in place.
            latents: (B, D, h, w) pre-quantisation encoder outputs of the current batch.
        """
        if step % self.interval:
            return 0
        dead = torch.nonzero(self.counts == 0).flatten()
        self.counts.zero_()
        if dead.numel() == 0:
            return 0
        candidates = latents.detach().permute(0, 2, 3, 1).reshape(-1, latents.shape[1]).float()  # (N, D)
        picks = torch.randint(candidates.shape[0], (dead.numel(),), device=candidates.device)
        weight = quantizer.embedding.weight
        # A little noise keeps several restarted codes that pick the same latent from coinciding.
        noise = torch.randn_like(candidates[picks]) * candidates.std() * 0.01
        weight[dead.to(weight.device)] = (candidates[picks] + noise).to(weight.dtype)
        return int(dead.numel())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"counts": self.counts.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.counts = state["counts"].clone().long()

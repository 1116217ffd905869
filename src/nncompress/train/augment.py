"""Batch data augmentation for image tensors: random translation and horizontal flip,
vectorised over the batch and driven by an explicit generator (deterministic)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def augment_batch(x: torch.Tensor, gen: torch.Generator, shift: int = 0, hflip: bool = False) -> torch.Tensor:
    """Shift each image by a random (dy, dx) in [-shift, shift] (zero fill) and flip it
    left-right with probability 1/2.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> augment_batch(torch.ones(2, 1, 4, 4), g, shift=0).shape
        torch.Size([2, 1, 4, 4])
    """
    if x.dim() != 4 or (shift == 0 and not hflip):
        return x
    b, c, h, w = x.shape  # (B, C, H, W)
    if hflip:
        flip = torch.rand(b, generator=gen) < 0.5
        x = torch.where(flip.view(b, 1, 1, 1).to(x.device), x.flip(3), x)
    if shift > 0:
        dy = torch.randint(0, 2 * shift + 1, (b,), generator=gen).to(x.device)
        dx = torch.randint(0, 2 * shift + 1, (b,), generator=gen).to(x.device)
        padded = F.pad(x, (shift, shift, shift, shift))  # (B, C, H+2s, W+2s)
        rows = torch.arange(h, device=x.device).view(1, h, 1) + dy.view(b, 1, 1)  # (B, H, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w) + dx.view(b, 1, 1)  # (B, 1, W)
        idx = torch.arange(b, device=x.device).view(b, 1, 1)
        x = padded.permute(0, 2, 3, 1)[idx, rows, cols].permute(0, 3, 1, 2).contiguous()
    return x

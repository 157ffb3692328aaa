"""Generator and discriminator networks (plain MLPs, no BatchNorm).

BatchNorm mixes records inside a batch, which breaks per-sample gradients and so DP-SGD;
the discriminator uses none and the generator uses LayerNorm, which is per-row.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fedsyn.common.encoder import Span


class Generator(nn.Module):
    """Maps (noise, condition) to raw outputs; :meth:`activate` applies the per-span heads."""

    def __init__(self, latent_dim: int, cond_dim: int, hidden: Sequence[int], spans: Sequence[Span]):
        super().__init__()
        layers: list[nn.Module] = []
        width = latent_dim + cond_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.LayerNorm(size), nn.ReLU(inplace=True)]
            width = size
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, spans[-1].end)
        self.spans = list(spans)
        self.latent_dim = latent_dim

    def forward(self, noise: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(torch.cat([noise, cond], dim=1)))

    def activate(self, raw: torch.Tensor, tau: float) -> torch.Tensor:
        """Gumbel-softmax for categorical blocks (differentiable samples), tanh for numerics."""
        parts = []
        for span in self.spans:
            block = raw[:, span.start:span.end]
            parts.append(torch.tanh(block) if span.activation == "tanh" else F.gumbel_softmax(block, tau=tau))
        return torch.cat(parts, dim=1)

    def sample(self, raw: torch.Tensor) -> torch.Tensor:
        """Discrete samples for release: one-hot by the Gumbel-max trick (a draw from each
        block's softmax, without computing it), tanh for numerics."""
        out = torch.tanh(raw)
        for span in self.spans:
            if span.activation == "softmax":
                block = raw[:, span.start:span.end]
                gumbel = -torch.empty_like(block).exponential_().log()
                choice = (block + gumbel).argmax(dim=1, keepdim=True)
                out[:, span.start:span.end] = torch.zeros_like(block).scatter_(1, choice, 1.0)
        return out


class Discriminator(nn.Module):
    """Scores (row, condition) pairs; trained only with DP-SGD on real rows."""

    def __init__(self, data_dim: int, cond_dim: int, hidden: Sequence[int]):
        super().__init__()
        layers: list[nn.Module] = []
        width = data_dim + cond_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.LeakyReLU(0.2)]
            width = size
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, rows: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([rows, cond], dim=1)).squeeze(-1)

"""Generator and discriminator networks (plain MLPs, no BatchNorm).

BatchNorm mixes records inside a batch, which breaks per-sample gradients and so DP-SGD;
the discriminator uses none and the generator uses LayerNorm, which is per-row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from fedsyn.model.encoder import Span


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
        raw: torch.Tensor = self.head(self.body(torch.cat([noise, cond], dim=1)))
        return raw

    def activate(self, raw: torch.Tensor, tau: float, generator: torch.Generator) -> torch.Tensor:
        """Gumbel-softmax for categorical blocks (differentiable samples), tanh for numerics.

        The Gumbel noise comes from ``generator``: ``F.gumbel_softmax`` would draw it from
        PyTorch's global generator, which no component owns."""
        parts = []
        for span in self.spans:
            block = raw[:, span.start:span.end]
            if span.activation == "tanh":
                parts.append(torch.tanh(block))
            else:
                parts.append(torch.softmax((block + _gumbel(block, generator)) / tau, dim=1))
        return torch.cat(parts, dim=1)

    def sample(self, raw: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Discrete samples for release: one-hot by the Gumbel-max trick (a draw from each
        block's softmax, without computing it), tanh for numerics."""
        out = torch.tanh(raw)
        for span in self.spans:
            if span.activation == "softmax":
                block = raw[:, span.start:span.end]
                gumbel = _gumbel(block, generator)
                choice = (block + gumbel).argmax(dim=1, keepdim=True)
                out[:, span.start:span.end] = torch.zeros_like(block).scatter_(1, choice, 1.0)
        return out


def _gumbel(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Standard Gumbel noise shaped like ``like``, drawn from ``generator``."""
    return -torch.empty_like(like).exponential_(generator=generator).log()


def reset_parameters(module: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default ``nn.Linear`` initialisation, drawn from ``generator`` instead of the
    global generator (LayerNorm's initialisation is constant)."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            with torch.no_grad():
                nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
                if layer.bias is not None:
                    bound = 1 / math.sqrt(layer.in_features) if layer.in_features > 0 else 0.0
                    layer.bias.uniform_(-bound, bound, generator=generator)


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
        score: torch.Tensor = self.net(torch.cat([rows, cond], dim=1))
        return score.squeeze(-1)

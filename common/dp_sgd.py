"""DP-SGD building blocks: Poisson sampling, per-sample gradients, clipping and noise.

Per-sample gradients come from ``torch.func`` (vmap over grad) rather than Opacus hooks,
so any per-record loss works, a gradient penalty's double backward included. Noise is
drawn with Opacus's own generator and the cost is accounted with Opacus accountants
(:mod:`fedsyn.common.accounting`): the mechanism is exactly the one the accountant models.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from opacus.optimizers.optimizer import _generate_noise
from torch import nn
from torch.func import functional_call, grad, vmap


def poisson_sample(n_rows: int, sample_rate: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Indices of a Poisson sample: each row joins independently with ``sample_rate``.

    The batch size varies from step to step; that randomness is what the sub-sampled
    Gaussian accountant assumes, so fixed-size shuffled batches must not be used instead.
    """
    mask = torch.rand(n_rows, generator=generator, device=device) < sample_rate
    return mask.nonzero(as_tuple=True)[0]


def per_sample_gradients(
    module: nn.Module,
    loss_of_one: Callable[[torch.Tensor], torch.Tensor],
    inputs: tuple[torch.Tensor, ...],
) -> dict[str, torch.Tensor]:
    """Gradient of ``loss_of_one(module(*row))`` for every row, as ``{name: [batch, *shape]}``.

    ``loss_of_one`` maps the module's output for a batch of one to a scalar; everything in
    it that touches the real record is covered, so clipping bounds the record's influence.
    """
    params = {name: p.detach() for name, p in module.named_parameters()}
    buffers = {name: b.detach() for name, b in module.named_buffers()}

    def loss(p: dict[str, torch.Tensor], *row: torch.Tensor) -> torch.Tensor:
        output = functional_call(module, (p, buffers), tuple(x.unsqueeze(0) for x in row))
        return loss_of_one(output)

    return vmap(grad(loss), in_dims=(None, *([0] * len(inputs))))(params, *inputs)


def clip_and_sum(per_sample: dict[str, torch.Tensor], max_grad_norm: float) -> dict[str, torch.Tensor]:
    """Scale every record's whole gradient (all parameters together) to norm <= C, then sum."""
    norms = torch.stack([g.flatten(start_dim=1).norm(dim=1) for g in per_sample.values()]).norm(dim=0)
    factors = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    return {name: torch.einsum("b,b...->...", factors, g) for name, g in per_sample.items()}


def privatize(
    summed: dict[str, torch.Tensor],
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: float,
    generator: torch.Generator | None,
) -> dict[str, torch.Tensor]:
    """Add N(0, (sigma*C)^2) to the clipped sum and divide by the *expected* batch size.

    Dividing by the expected (public) size rather than the realised (private) one keeps
    the batch size itself out of the released gradient.
    """
    return {
        name: (g + _generate_noise(std=noise_multiplier * max_grad_norm, reference=g, generator=generator))
        / expected_batch_size
        for name, g in summed.items()
    }


def private_gradient(
    module: nn.Module,
    loss_of_one: Callable[[torch.Tensor], torch.Tensor],
    inputs: tuple[torch.Tensor, ...],
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: float,
    generator: torch.Generator | None,
) -> dict[str, torch.Tensor]:
    """One DP-SGD gradient of the mean per-record loss over a Poisson batch (may be empty)."""
    if inputs[0].shape[0] == 0:
        summed = {name: torch.zeros_like(p) for name, p in module.named_parameters()}
    else:
        summed = clip_and_sum(per_sample_gradients(module, loss_of_one, inputs), max_grad_norm)
    return privatize(summed, noise_multiplier, max_grad_norm, expected_batch_size, generator)

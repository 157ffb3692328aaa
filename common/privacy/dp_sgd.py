"""DP-SGD building blocks: Poisson sampling, per-sample clipping and noise.

Two interchangeable ways compute the sum of per-record clipped gradients (in float64, see
:func:`privatize`):

* :func:`clip_and_sum` over :func:`per_sample_gradients` (``torch.func`` vmap over grad)
  works for any per-record loss, a gradient penalty's double backward included, but
  materialises one gradient per record.
* :func:`linear_clipped_sum` ("book-keeping" ghost clipping) for networks whose only
  parameters are ``nn.Linear`` layers: a record's weight gradient is the outer product of
  its output-gradient and input, so its norm is ``|g|*|a|`` and the clipped sum is one
  matrix product. No per-record gradient is ever built; cost is close to plain backprop.

Clipping is total: whatever the (coordinator-chosen) network and clipping norm, one
record's clipped contribution has norm at most C and is finite. Norms, clip factors and
the clipped sum are computed in float64, so a float32 gradient can neither overflow its
norm nor push its clip factor into the subnormal range, where rounding let one record
exceed C; a record whose forward or backward pass is not finite contributes exactly 0 (an
``inf * 0`` in the sum would otherwise make the whole update NaN only when that record is
in the batch: a membership oracle). Such a record is treated as if it were absent, which
the add/remove-one-record guarantee already covers.

Noise is Gaussian with standard deviation sigma*C and the cost is accounted with Opacus
accountants (:mod:`fedsyn.privacy.accounting`): the mechanism is exactly the one the accountant
models. The Poisson sample and the noise come from the mechanism's own NumPy generator (PCG64,
seeded by a ``SeedSequence``: 128 bits of entropy), never from a PyTorch generator: PyTorch's CPU
generator keeps only the low 32 bits of its seed, and a coordinator that tried the 2^32 seeds
against a reply could subtract the noise and read a record back. The sample is drawn in
float64 against a threshold rounded *down* to the draws' 2^-53 grid, so a record joins with
probability at most the sample rate charged (float32 draws join at multiples of 2^-24:
a rate of 1e-9 charged would have sampled at 6e-8).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

UNIFORM_GRID = 2.0 ** -53  # NumPy's uniform draws are multiples of this


def inclusion_threshold(sample_rate: float) -> float:
    """The largest multiple of :data:`UNIFORM_GRID` not above ``sample_rate``: a uniform draw
    below it has probability exactly that, never more than the rate the accountant charges."""
    return math.floor(sample_rate / UNIFORM_GRID) * UNIFORM_GRID


def poisson_sample(n_rows: int, sample_rate: float, generator: np.random.Generator, device: torch.device
                   ) -> torch.Tensor:
    """Indices of a Poisson sample: each row joins independently with ``sample_rate`` (at most).

    The batch size varies from step to step; that randomness is what the sub-sampled
    Gaussian accountant assumes, so fixed-size shuffled batches must not be used instead.
    """
    mask = generator.random(n_rows) < inclusion_threshold(sample_rate)
    return torch.as_tensor(np.flatnonzero(mask), device=device)


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

    gradients: dict[str, torch.Tensor] = vmap(grad(loss), in_dims=(None, *([0] * len(inputs))))(params, *inputs)
    return gradients


def clip_factors(norms: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
    """Per-record scale (float64) that brings each whole-gradient norm to at most C
    (Opacus's rule); a record whose norm is not finite gets 0, never NaN. The bound is C less a
    billionth: float64 rounding had left one record's clipped norm 2e-15 above C (helper-90 F5)."""
    norms = norms.double()
    finite = torch.isfinite(norms)
    scale = (max_grad_norm * (1 - 1e-9) / (torch.where(finite, norms, 0.0) + 1e-6)).clamp(max=1.0)
    return torch.where(finite, scale, 0.0)


def _finite_rows(tensors: list[torch.Tensor], batch: int) -> torch.Tensor:
    """True for each record whose values in every one of ``tensors`` ([batch, ...]) are finite."""
    finite = torch.ones(batch, dtype=torch.bool, device=tensors[0].device)
    for tensor in tensors:
        finite &= torch.isfinite(tensor.reshape(batch, -1)).all(dim=1)
    return finite


def _present(present: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
    """``present`` as a boolean mask of ``batch`` records (all True when None)."""
    if present is None:
        return torch.ones(batch, dtype=torch.bool, device=device)
    return present.to(device=device, dtype=torch.bool)


def _zero_rows(tensor: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``tensor`` in float64 with the records outside ``keep`` set to exactly 0 (not ``x * 0``,
    which is NaN for an infinite ``x``)."""
    shape = (tensor.shape[0],) + (1,) * (tensor.dim() - 1)
    return torch.where(keep.reshape(shape), tensor.double(), 0.0)


def clip_and_sum(per_sample: dict[str, torch.Tensor], max_grad_norm: float, present: torch.Tensor | None = None
                 ) -> dict[str, torch.Tensor]:
    """Scale every record's whole gradient (all parameters together) to norm <= C, then sum.

    A record with any non-finite gradient entry contributes 0, and so does one ``present`` marks
    False (an empty slot of a padded sample); the arithmetic is float64."""
    batch = next(iter(per_sample.values())).shape[0]
    finite = _finite_rows(list(per_sample.values()), batch)
    finite &= _present(present, batch, finite.device)
    clean = {name: _zero_rows(g, finite) for name, g in per_sample.items()}
    norms = torch.stack([g.flatten(start_dim=1).norm(dim=1) for g in clean.values()]).norm(dim=0)
    factors = torch.where(finite, clip_factors(norms, max_grad_norm), 0.0)
    return {name: torch.einsum("b,b...->...", factors, g) for name, g in clean.items()}


def supports_linear_clipping(module: nn.Module) -> bool:
    """True when every parameter belongs to an ``nn.Linear`` applied to [batch, features]."""
    owners = [m for m in module.modules() if any(True for _ in m.parameters(recurse=False))]
    return bool(owners) and all(isinstance(m, nn.Linear) for m in owners)


def linear_clipped_sum(
    module: nn.Module,
    loss_of_one: Callable[[torch.Tensor], torch.Tensor],
    inputs: tuple[torch.Tensor, ...],
    max_grad_norm: float,
    present: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Sum of per-record gradients, each clipped to norm <= C, for Linear-only networks; a
    record ``present`` marks False (an empty slot of a padded sample) contributes 0.

    ``loss_of_one`` is applied to the batched output; since records do not interact
    (no BatchNorm), the gradient of the summed loss at each layer's output is each
    record's own output-gradient.
    """
    layers = [(name, m) for name, m in module.named_modules() if isinstance(m, nn.Linear)]
    captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def keep(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def hook(_: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            captured[name] = (args[0].detach(), output)
        return hook

    handles = [m.register_forward_hook(keep(name)) for name, m in layers]
    try:
        loss = loss_of_one(module(*inputs))
    finally:
        for handle in handles:
            handle.remove()
    outputs = [captured[name][1] for name, _ in layers]
    output_grads = torch.autograd.grad(loss, outputs, allow_unused=False)
    batch = inputs[0].shape[0]
    activations = [captured[name][0] for name, _ in layers]
    finite = _finite_rows([*activations, *output_grads], batch) & _present(present, batch, inputs[0].device)
    clean_grads = [_zero_rows(g, finite) for g in output_grads]
    clean_activations = [_zero_rows(a, finite) for a in activations]
    squared = torch.zeros(batch, dtype=torch.float64, device=inputs[0].device)
    for (_, layer), grad_out, activation in zip(layers, clean_grads, clean_activations):
        g2 = grad_out.pow(2).sum(dim=1)
        squared = squared + g2 * activation.pow(2).sum(dim=1) + (g2 if layer.bias is not None else 0.0)
    factors = torch.where(finite, clip_factors(squared.sqrt(), max_grad_norm), 0.0)
    summed: dict[str, torch.Tensor] = {}
    for (name, layer), grad_out, activation in zip(layers, clean_grads, clean_activations):
        weighted = grad_out * factors.unsqueeze(1)
        prefix = f"{name}." if name else ""
        summed[prefix + "weight"] = weighted.T @ activation
        if layer.bias is not None:
            summed[prefix + "bias"] = weighted.sum(dim=0)
    return summed


def clipped_sum(
    module: nn.Module,
    loss_of_one: Callable[[torch.Tensor], torch.Tensor],
    inputs: tuple[torch.Tensor, ...],
    max_grad_norm: float,
    present: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Sum of per-record clipped gradients by the fastest exact method the module allows, over
    the records ``present`` marks (all when None)."""
    if supports_linear_clipping(module):
        return linear_clipped_sum(module, loss_of_one, inputs, max_grad_norm, present)
    return clip_and_sum(per_sample_gradients(module, loss_of_one, inputs), max_grad_norm, present)


def privatize(
    summed: dict[str, torch.Tensor],
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: float,
    generator: np.random.Generator | None,
) -> dict[str, torch.Tensor]:
    """Add N(0, (sigma*C)^2) to the clipped sum and divide by the *expected* batch size.
    ``generator`` is the mechanism's stream (None: fresh operating-system entropy).

    Dividing by the expected (public) size rather than the realised (private) one keeps
    the batch size itself out of the released gradient. The clipped sum arrives in float64 and
    the noise is added there: rounding it to float32 first could let one record move it by
    more than C when C is tiny. Only the noisy result, a DP output, is rounded to float32.
    """
    std = noise_multiplier * max_grad_norm
    stream = generator if generator is not None else np.random.default_rng()
    return {name: ((g.double() + torch.as_tensor(stream.normal(0.0, std, size=tuple(g.shape)), device=g.device))
                   / expected_batch_size).float()
            for name, g in summed.items()}


def private_gradient(
    module: nn.Module,
    loss_of_one: Callable[[torch.Tensor], torch.Tensor],
    inputs: tuple[torch.Tensor, ...],
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: float,
    generator: np.random.Generator | None,
    present: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """One DP-SGD gradient of the mean per-record loss over a Poisson batch (may be empty);
    ``present`` marks the batch's records among the empty slots of a padded sample."""
    if inputs[0].shape[0] == 0:
        summed = {name: torch.zeros_like(p, dtype=torch.float64) for name, p in module.named_parameters()}
    else:
        summed = clipped_sum(module, loss_of_one, inputs, max_grad_norm, present)
    return privatize(summed, noise_multiplier, max_grad_norm, expected_batch_size, generator)

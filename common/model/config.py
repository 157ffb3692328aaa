"""The model's public settings, kept apart from the model code so that reading them (the
command line's defaults, a run's configuration) loads no deep-learning library."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# How model weights may travel between sites and coordinator (float16 halves the bytes).
TRANSPORT_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class GANConfig:
    """Network and optimiser settings shared by all sites of a run (public)."""

    latent_dim: int = 64
    generator_hidden: tuple[int, ...] = (256, 256)
    discriminator_hidden: tuple[int, ...] = (256, 256)
    generator_lr: float = 2e-3
    discriminator_lr: float = 2e-3
    batch_size: int = 512
    max_grad_norm: float = 1.0
    gumbel_tau: float = 0.2
    generator_ema: float = 0.995
    betas: tuple[float, float] = field(default=(0.5, 0.9))
    # Weight of the generator's marginal-matching term against the noisy outcome tables
    # (fedsyn.model.matching): free post-processing of the round-0 release; 0 switches it off.
    matching_weight: float = 3.0
    # Federated runs: one public slot per site. The generator is told which site it generates
    # for, so the global model is a union of the sites' distributions, not their average.
    site_slots: int = 0
    # The release relates each numeric column to the others only as the noisy tables say
    # (fedsyn.model.max_entropy); False keeps what the generator drew, which at a high epsilon
    # holds relations it learnt and at a low one relations it invented.
    numbers_as_measured: bool = True

    def __post_init__(self) -> None:
        def whole(value: object, low: int, high: int) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high

        def real(value: object, low: float, high: float) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and low < value <= high

        layers_ok = all(isinstance(layers, tuple) and 1 <= len(layers) <= 8 and all(whole(w, 1, 4096) for w in layers)
                        for layers in (self.generator_hidden, self.discriminator_hidden))
        checks = {
            "latent_dim": whole(self.latent_dim, 1, 4096), "hidden layers": layers_ok,
            "batch_size": whole(self.batch_size, 1, 1_000_000), "site_slots": whole(self.site_slots, 0, 4096),
            "learning rates": real(self.generator_lr, 0, 1) and real(self.discriminator_lr, 0, 1),
            "max_grad_norm": real(self.max_grad_norm, 0, 1e6),
            "matching_weight": real(self.matching_weight, -1e-12, 1e6), "gumbel_tau": real(self.gumbel_tau, 0, 100),
            "generator_ema": real(self.generator_ema, -1e-12, 1) and self.generator_ema < 1,
            "betas": isinstance(self.betas, tuple) and len(self.betas) == 2
            and all(real(b, -1e-12, 1) for b in self.betas),
            "numbers_as_measured": isinstance(self.numbers_as_measured, bool),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"GAN settings out of range or of the wrong type: {bad}")

    @classmethod
    def from_dict(cls, raw: object) -> GANConfig:
        if not isinstance(raw, dict):
            raise ValueError(f"GAN settings must be a mapping, got {type(raw).__name__}")
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
        return cls(**values)

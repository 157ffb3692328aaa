"""One checkpoint format for every generator fedsyn writes.

A single-site fit (``DPTabularGAN.save``) and a federated release (``generator.pt``) store
the same thing: the public schema, the noisy marginals that define the encoding, the
network settings, the averaged generator's weights, and, for a federated model, the public
site slots with the noisy per-site marginals the release draws them from. So any fedsyn
model file opens with :func:`load_checkpoint` (and ``DPTabularGAN.load``). Only tensors and
plain data are stored and read back (``weights_only``): loading never runs pickled code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from fedsyn.data.schema import Schema
from fedsyn.errors import ConfigurationError, validation_problems
from fedsyn.model.config import GANConfig
from fedsyn.model.encoder import TableEncoder
from fedsyn.model.training import GANTrainer
from fedsyn.privacy.marginals import Marginals, check_slot_tables

# 5: a continuous column's bounds are atoms of the public grid (fedsyn.data.grid); 6: an integer's lower bound too;
# 7: a narrow integer range's top value a bin of its own
FORMAT = "fedsyn-model/7"


@dataclass
class Checkpoint:
    """A loaded model: its schema, a trainer ready to sample, and what was stored about privacy
    (``privacy``) and the estimator that made it (``params``; None for a federated release)."""

    schema: Schema
    trainer: GANTrainer
    privacy: dict[str, Any]
    params: dict[str, Any] | None


def save_checkpoint(path: str | Path, schema: Schema, trainer: GANTrainer, privacy: dict[str, Any],
                    params: dict[str, Any] | None = None, with_discriminator: bool = False) -> None:
    """Write ``trainer``'s averaged generator (and, for further training, its discriminator)."""
    slots = trainer.release_slots
    torch.save({
        "format": FORMAT,
        "schema": schema.model_dump(mode="json"),
        "marginals": trainer.encoder.marginals.to_dict(),
        "config": asdict(trainer.config),
        "generator": trainer.sampler.state_dict(),
        "discriminator": trainer.discriminator.state_dict() if with_discriminator else None,
        "site_slots": None if slots is None else {"totals": list(slots.totals),
                                                  "marginals": [m.to_dict() for m in slots.marginals],
                                                  "site_column": slots.site_column,
                                                  "table_noise_std": slots.table_noise_std},
        "privacy": privacy,
        "params": params,
    }, Path(path))


def load_checkpoint(path: str | Path, device: str = "cpu") -> Checkpoint:
    """Read any fedsyn model file; anything else is refused with a plain message."""
    try:
        raw = torch.load(Path(path), map_location=device, weights_only=True)
    except FileNotFoundError:
        raise ConfigurationError(f"model file not found: {path}") from None
    except Exception:  # noqa: BLE001 - torch's text would advise unsafe unpickling
        raise ConfigurationError(f"{path} is not a fedsyn model file; save one with DPTabularGAN.save") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else None
        raise ConfigurationError(f"{path} is not a fedsyn model file of this version (format {found!r}, "
                                 f"expected {FORMAT!r})")
    try:
        schema = Schema.model_validate(raw["schema"])
    except ValidationError as exc:
        raise ConfigurationError(f"{path} holds a malformed schema ({validation_problems(exc)}): it was not written "
                                 "by fedsyn or was changed since") from None
    config = GANConfig.from_dict(raw["config"])
    marginals = Marginals.from_dict(raw["marginals"])
    per_slot = [Marginals.from_dict(m) for m in raw["site_slots"]["marginals"]] if raw["site_slots"] is not None else []
    try:  # the release is drawn by these tables: a malformed one is refused, not misread
        check_slot_tables(schema, marginals, [marginals, *per_slot])
    except ValueError as exc:
        raise ConfigurationError(f"{path} holds malformed noisy tables ({exc}): it was not written by fedsyn "
                                 "or was changed since; use the release's own generator.pt (fedsyn verify)") from None
    trainer = GANTrainer(TableEncoder(schema, marginals), config, device)
    trainer.generator.load_state_dict(raw["generator"])
    trainer.sampler.load_state_dict(raw["generator"])
    if raw["discriminator"] is not None:
        trainer.discriminator.load_state_dict(raw["discriminator"])
    if raw["site_slots"] is not None:
        try:  # tables that pass the shape checks can still be beyond what a distribution can be read from
            trainer.set_release_slots(raw["site_slots"]["totals"], per_slot, raw["site_slots"].get("site_column"),
                                      raw["site_slots"].get("table_noise_std"))
        except (ValueError, IndexError):
            raise ConfigurationError(f"{path} holds malformed site tables: it was not written by fedsyn or was "
                                     "changed since; use the release's own generator.pt (fedsyn verify)") from None
    return Checkpoint(schema, trainer, raw["privacy"], raw["params"])

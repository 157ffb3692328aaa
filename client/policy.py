"""A hospital's own privacy policy: what the site allows, whatever the coordinator asks.

One file (TOML or JSON) next to the private extract. Paths in it are relative to the file.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints, ValidationError, field_validator, model_validator

from fedsyn.data.validation import RecordHandling
from fedsyn.errors import NAME_CHARS, ConfigurationError, public_name, validation_problems
from fedsyn.model.config import GANConfig
from fedsyn.privacy.budget import delta_fits


class PolicyError(ConfigurationError, ValueError):
    """The site policy file is missing or invalid."""


class CoordinatorConnection(BaseModel):
    """How this hospital's SuperNode reaches the coordinator: outbound TLS only."""

    superlink: str = Field(description="host:port of the coordinator's SuperLink")
    root_certificates: Path = Field(description="the coordinator's CA certificate (ca.crt)")
    auth_private_key: Path = Field(description="this site's SuperNode authentication key (auth.key)")
    local_port: int = Field(default=9094, ge=1024, le=65535,
                            description="loopback port of the SuperNode's own API (distinct per node on one host)")

    model_config = {"extra": "forbid"}  # a misspelled key is named, never silently the default


class RequestLimits(BaseModel):
    """The most a coordinator may ask of this site in one training request.

    The coordinator chooses the model and its settings; each is also a lever for an attack
    (an overflow trap needs width and depth, a tiny clipping norm pushes arithmetic to its
    edges, q = 1 puts every record in every batch). Clipping is total whatever these are
    (:mod:`fedsyn.privacy.dp_sgd`); these limits keep the request inside what the site has
    been tested with. The defaults admit fedsyn's own settings with room to tune.
    """

    model_config = {"extra": "forbid"}

    min_clip_norm: float = Field(default=1e-3, gt=0, description="smallest per-record clipping norm C")
    max_clip_norm: float = Field(default=100.0, gt=0, description="largest per-record clipping norm C")
    max_sample_rate: float = Field(default=0.5, gt=0, le=1, description="largest Poisson sampling rate q")
    max_learning_rate: float = Field(default=0.1, gt=0, le=1, description="largest generator/discriminator lr")
    max_width: int = Field(default=1024, ge=1, description="widest hidden layer or latent size")
    max_layers: int = Field(default=4, ge=1, description="most hidden layers in either network")
    max_local_steps: int = Field(default=200, ge=1, description="most DP-SGD steps in one round")
    max_batch_size: int = Field(default=8192, ge=1, description="largest nominal batch (generated rows per step)")
    max_site_slots: int = Field(default=128, ge=0, description="most site slots (one per hospital of the "
                                "federation) a request's model and tables may have: each adds work to every step "
                                "however few rows the site holds")

    def problems(self, config: GANConfig, sample_rate: float, local_steps: int) -> list[str]:
        """What in a request exceeds these limits, in the request's own (public) values."""
        found = []
        if not self.min_clip_norm <= config.max_grad_norm <= self.max_clip_norm:
            found.append(f"clipping norm {config.max_grad_norm:g} outside [{self.min_clip_norm:g}, "
                         f"{self.max_clip_norm:g}]")
        if sample_rate > self.max_sample_rate:
            found.append(f"sample rate {sample_rate:g} above {self.max_sample_rate:g}")
        if max(config.generator_lr, config.discriminator_lr) > self.max_learning_rate:
            found.append(f"learning rates ({config.generator_lr:g}, {config.discriminator_lr:g}) above "
                         f"{self.max_learning_rate:g}")
        widths = (*config.generator_hidden, *config.discriminator_hidden, config.latent_dim)
        if max(widths) > self.max_width:
            found.append(f"width {max(widths)} above {self.max_width}")
        if max(len(config.generator_hidden), len(config.discriminator_hidden)) > self.max_layers:
            found.append(f"more than {self.max_layers} hidden layers")
        if local_steps > self.max_local_steps:
            found.append(f"{local_steps} local steps above {self.max_local_steps}")
        if config.batch_size > self.max_batch_size:
            found.append(f"batch size {config.batch_size} above {self.max_batch_size}")
        # A slot is a column of the networks' input and a set of tables the matching reads at every
        # step: 4,096 of them took a 1,000-row site 6.5 s a step against 0.6 s for one, work of the
        # coordinator's choosing that could push a reply past any reply quantum (helper-99 M2).
        if config.site_slots > self.max_site_slots:
            found.append(f"{config.site_slots} site slots above {self.max_site_slots}")
        return found


class SitePolicy(BaseModel):
    """What this hospital allows; checked by the site on every request, whatever the coordinator asks."""

    site_id: str = Field(min_length=1, max_length=NAME_CHARS, description="name shown in the coordinator's reports: "
                         "printable characters, none of | < > ` \\")
    data: Path = Field(description="the private extract (CSV or Parquet)")
    schema_path: Path = Field(alias="schema", description="the shared public schema (JSON)")
    ledger: Path = Field(description="where this site keeps its spent-privacy ledger")
    max_epsilon: float = Field(gt=0, description="total epsilon this site will ever spend on this data")
    delta: float = Field(gt=0, lt=1e-3)
    min_noise_multiplier: float = Field(default=0.5, gt=0, description="refuse any DP-SGD step with less noise")
    max_epsilon_per_request: float | None = Field(
        default=None, gt=0, description="the most one request (a round's DP-SGD, round 0's tables, its pair tables) "
        "may add to this site's epsilon, whatever its noise: a coordinator cannot spend the whole budget in one "
        "query. Unset: any request the budget affords")
    accountant: Literal["rdp", "prv"] = "rdp"
    out_of_domain: RecordHandling = Field(
        default="drop", description="records with a value the schema does not allow (unknown category, outside the "
        "public bounds, missing where not allowed): drop them, clamp numbers to the bounds (dropping what cannot be "
        "clamped), blank the bad cells of nullable columns (dropping the rest), or refuse every request until the "
        "extract is fixed. Counts stay in the site's log")
    max_problem_share: float = Field(
        default=0.1, gt=0, le=1, description="when the site starts, the most of the extract's records out_of_domain "
        "may leave out: more, and the site refuses to join until the extract or the schema is fixed (a column whose "
        "form changed in a new export would otherwise leave the site training on the few records left). Checked at "
        "start, on this machine only; 1: never")
    limits: RequestLimits = Field(default_factory=RequestLimits,
                                  description="the most a coordinator may ask in one training request")
    allow_unreviewed_schema: bool = False
    reply_quantum_seconds: float = Field(
        default=1.0, ge=0, le=60, description="every reply leaves at the next whole multiple of this many seconds "
        "after its request came: how long the site took, which grows with its rows, is seen only to this "
        "quantum (a timing channel DP does not cover). 0: off (simulations, where coordinator and sites are "
        "one researcher)")
    disk_reserve_mib: int = Field(
        default=256, ge=1, description="free disk (MiB) kept beside the ledger and the stored replies: while less is "
        "free, a request is refused before anything is charged (no_room), and a request whose answer, with the copy "
        "written beside it, exceeds the reserve is refused by policy. A fixed amount, so a coordinator learns only "
        "whether less than it is free, never how much")
    max_rows: int | None = Field(
        default=None, ge=1, description="a public upper bound on the extract's rows (say a round number above "
        "it): every DP-SGD step samples over this many, those beyond the extract empty, so a training round's "
        "work, and how long it takes, do not depend on how many patients the extract holds. Unset: the work "
        "grows with the extract, and a coordinator asking many cheap rounds can time the site's size. delta must be "
        "below 1/max_rows")
    device: str = Field(default="cpu", description="torch device for local training, e.g. 'cuda'")
    seed: int | None = Field(default=None, description="fix this site's noise for reproducible simulations; a "
                             "deployed site refuses to run with one (operating-system randomness)")
    coordinator: CoordinatorConnection | None = None
    approved_apps: list[Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]] = Field(
        default_factory=list, description="SHA-256 of the only coordinator App bundles this site runs "
        "(`fedsyn server app-hash`); empty: any code-free fedsyn App")

    # A misspelled key ('max_epsilon_per_requst') is refused by name: ignored, the cap the
    # hospital believed it set was never enforced (helper-98 H3).
    model_config = {"populate_by_name": True, "extra": "forbid"}

    @classmethod
    def load(cls, path: str | Path) -> SitePolicy:
        path = Path(path)
        try:
            text = path.read_text()
            raw = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except FileNotFoundError:
            raise PolicyError(f"site policy file not found: {path}") from None
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
            raise PolicyError(f"site policy {path} cannot be parsed: {exc}") from None
        try:
            policy = cls.model_validate(raw)
        except ValidationError as exc:
            raise PolicyError(f"site policy {path} is invalid: {validation_problems(exc)}") from None
        base = path.parent
        update: dict[str, object] = {"data": base / policy.data, "schema_path": base / policy.schema_path,
                        "ledger": base / policy.ledger}
        if policy.coordinator is not None:
            update["coordinator"] = policy.coordinator.model_copy(update={
                "root_certificates": base / policy.coordinator.root_certificates,
                "auth_private_key": base / policy.coordinator.auth_private_key})
        return policy.model_copy(update=update)

    @property
    def audit_trail(self) -> Path:
        """The site's own tamper-evident trail of what it sent, spent and refused."""
        return self.ledger.with_name("audit.jsonl")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.model_dump_json(by_alias=True, indent=2) + "\n")

    @model_validator(mode="after")
    def _delta_below_one_over_max_rows(self) -> SitePolicy:
        """With ``max_rows``, δ must be below 1/``max_rows``: every extract the policy allows then
        has δ below 1/n, and no request's answer depends on where the row count stands against 1/δ."""
        if self.max_rows is not None and not delta_fits(self.delta, self.max_rows):
            raise ValueError(f"delta {self.delta:g} must be below 1/max_rows ({1 / self.max_rows:g}): lower max_rows "
                             "(keeping it above the extract), or, for a new ledger only, delta (a ledger keeps its "
                             "delta)")
        return self

    @field_validator("site_id")
    @classmethod
    def _shown_as_it_is(cls, site_id: str) -> str:
        """The coordinator shows a name as :func:`public_name` leaves it: one it would change is refused here."""
        if public_name(site_id) != site_id:
            raise ValueError("site_id may hold printable characters only, none of | < > ` \\, and no space at "
                             "either end: it is shown in the coordinator's log and reports")
        return site_id

    def deployment_problem(self) -> str | None:
        """Why this policy may not run a deployed site (its ClientApp, ``fedsyn client start``), or
        None. A seeded site keys its noise by (seed, ledger nonce, mechanism, ledger position):
        restored whole from an older backup, its state folder takes a ledger position again and
        drew the same noise there, so a coordinator asking the same tables at another noise
        solved the two answers for the exact counts (helper-84 read every table back to 1e-13)."""
        if self.seed is not None:
            return ("the site's policy sets a seed, which is for simulations only: a deployed site draws its noise "
                    "from fresh entropy; its operator removes the seed")
        return None

"""A hospital's own privacy policy: what the site allows, whatever the coordinator asks.

One file (TOML or JSON) next to the private extract. Paths in it are relative to the file.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints, ValidationError

from fedsyn.errors import ConfigurationError


class PolicyError(ConfigurationError, ValueError):
    """The site policy file is missing or invalid."""


class CoordinatorConnection(BaseModel):
    """How this hospital's SuperNode reaches the coordinator: outbound TLS only."""

    superlink: str = Field(description="host:port of the coordinator's SuperLink")
    root_certificates: Path = Field(description="the coordinator's CA certificate (ca.crt)")
    auth_private_key: Path = Field(description="this site's SuperNode authentication key (auth.key)")
    local_port: int = Field(default=9094, ge=1024, le=65535,
                            description="loopback port of the SuperNode's own API (distinct per node on one host)")


class SitePolicy(BaseModel):
    """What this hospital allows; checked by the site on every request, whatever the coordinator asks."""

    site_id: str = Field(min_length=1, description="name shown in the coordinator's reports")
    data: Path = Field(description="the private extract (CSV or Parquet)")
    schema_path: Path = Field(alias="schema", description="the shared public schema (JSON)")
    ledger: Path = Field(description="where this site keeps its spent-privacy ledger")
    max_epsilon: float = Field(gt=0, description="total epsilon this site will ever spend on this data")
    delta: float = Field(gt=0, lt=1e-3)
    min_noise_multiplier: float = Field(default=0.5, gt=0, description="refuse any DP-SGD step with less noise")
    accountant: Literal["rdp", "prv"] = "rdp"
    allow_unreviewed_schema: bool = False
    device: str = Field(default="cpu", description="torch device for local training, e.g. 'cuda'")
    seed: int | None = Field(default=None, description="fix this site's noise for reproducible simulations; "
                             "leave unset in production (operating-system randomness)")
    coordinator: CoordinatorConnection | None = None
    approved_apps: list[Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]] = Field(
        default_factory=list, description="SHA-256 of the only coordinator App bundles this site runs "
        "(`fedsyn server app-hash`); empty: any code-free fedsyn App")

    model_config = {"populate_by_name": True}

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
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise PolicyError(f"site policy {path} is invalid: {problems}") from None
        base = path.parent
        update: dict = {"data": base / policy.data, "schema_path": base / policy.schema_path,
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

"""The coordinator's settings: one model, one set of tuned defaults, for every way to run.

``fedsyn simulate``, the deployed ServerApp (from the Flower App's run config), the benches
and tests all build a :class:`FederationSettings`; its defaults are the measured ones. It
loads no deep-learning library, so the command line can show the defaults at once.
Everything in it but the seed is public (:meth:`FederationSettings.public_dict`) and goes
into the release and the audit log, which say only whether the run was seeded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedsyn.data.schema import Schema
from fedsyn.errors import ConfigurationError, validation_problems
from fedsyn.model.config import TRANSPORT_DTYPES, GANConfig
from fedsyn.privacy.budget import MARGINALS_SHARE, PAIRS_SHARE, is_budget, is_pairs_share, pairs_allowed
from fedsyn.privacy.pairs import asked_pairs, split_pairs_text
from fedsyn.privacy.postprocessing import NOISE_FLOOR

# Tuned on the demo with bench_federation and its --sweep (3 seeds): 25 rounds x 8 local steps
# beat 20 x 15 at 5 sites (LR TSTR 0.794 vs 0.760) and stay above pooled GB at 3 sites.
FEDERATED_GAN = GANConfig(batch_size=256, generator_lr=1e-3, discriminator_lr=1e-3)
FEDERATED_ROUNDS = 25
FEDERATED_LOCAL_STEPS = 8
TABLE_STEPS = 0
MAX_TABLE_STEPS = 100_000

# Each rule the coordinator may combine the sites' updates by, as a release's README says it
# (fedsyn.server.strategy.AGGREGATIONS implements them)
AGGREGATION_RULES = {"mean": "mean", "median": "coordinate-wise median",
                     "trimmed-mean": "coordinate-wise mean after dropping a fifth of the sites at each end (none "
                                     "with fewer than five sites: Flower's FedTrimmedAvg, beta 0.2)"}


class FederationSettings(BaseModel):
    """Everything the coordinator decides, checked before any site is contacted or spends anything."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rounds: int = FEDERATED_ROUNDS
    local_steps: int = FEDERATED_LOCAL_STEPS
    sample_rate: float = 0.1
    epsilon: float = 1.0
    delta: float = 1e-5
    # Measured on the real multi-site bench (bench_tables, 4 tables): the noisy tables carry most of
    # the utility; 0.7 beat 0.5 (nwtco GB 0.89 vs 0.78), 0.3 and 0.1 (3 seeds, outcome tables only).
    # With pair tables (pairs_share 0.4) the outcome tables get 60 % of round 0: at 0.9 their noise is
    # about what 0.7 gave them alone, and 0.9 beat 0.7 on the outcome of 3 tables of 4 (2 seeds each:
    # rotterdam GB/LR .85/.88 vs .82/.86, azpro .89/.93 vs .88/.92, nwtco .91/.93 vs .87/.89; nmes
    # .64/.66 vs .67/.66). DP-SGD keeps the rest. A site that joins a second run has less room left.
    marginals_share: float = MARGINALS_SHARE
    # Of that release, the share each site spends on pair tables of other columns the sites choose
    # together by DP votes (fedsyn.privacy.pairs); the outcome tables get the rest. RDP sites only.
    pairs_share: float = PAIRS_SHARE
    # Pairs of columns the study needs measured, 'first:second' each (public: the researchers'
    # questions), before any the sites vote for (fedsyn.privacy.pairs.asked_pairs). Needs pairs_share.
    pairs_asked: list[str] = Field(default_factory=list)
    # Generator steps on the summed and per-site noisy tables alone (post-processing) before
    # round 1. Off by default: it steadied one bench table and cost three others and the wide
    # table their declared outcome (docs/benchmarks.md, "The generator fitted to the tables").
    table_steps: int = TABLE_STEPS
    noise_multiplier: float | None = None
    min_sites: int = 1
    site_noise_multiplier: float | None = None
    site_clipping_norm: float = 10.0
    transport_dtype: str = "float32"
    max_update_norm: float | None = None
    aggregation: str = "mean"
    allow_unreviewed_schema: bool = False
    accountant: Literal["rdp", "prv"] = "rdp"
    gan_config: GANConfig = FEDERATED_GAN
    # One public slot per site: the generator learns the union of the sites, not their average.
    site_conditional: bool = True
    # Numeric bins merged, per outcome class, until their counts beat this many noise std (0: off).
    # Measured with bench_tables' tables (per-class distributions against the rows, 20 noise draws): 1.5 >= 2 > 2.5 > 3.
    marginals_noise_floor: float = NOISE_FLOOR
    # The table's own column naming each row's hospital (categorical, not the outcome): a released
    # row's value there follows the site slot that generated it. Needs site_conditional.
    site_column: str | None = None
    seed: int | None = None
    timeout: float = 3600.0

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> FederationSettings:
        problems = []
        if not is_budget(self.epsilon):
            problems.append(f"epsilon={self.epsilon} must be a positive number")
        if not 0 < self.delta < 1:
            problems.append(f"delta={self.delta} must be in (0, 1)")
        if not 0 < self.marginals_share < 1:
            problems.append(f"marginals_share={self.marginals_share} must be in (0, 1)")
        if not is_pairs_share(self.pairs_share):
            problems.append(f"pairs_share={self.pairs_share} must be 0 (no pair tables) or in [0.01, 1)")
        if self.pairs_asked and not self.pairs_share:
            problems.append("pairs_asked needs pairs_share above 0: the pair tables are part of round 0's release")
        if self.pairs_share and not pairs_allowed(self.accountant):
            problems.append(f"pairs_share={self.pairs_share} needs the rdp accountant: set pairs_share = 0 for prv")
        if not 0 < self.sample_rate <= 1:
            problems.append(f"sample_rate={self.sample_rate} must be in (0, 1]")
        if self.rounds < 1 or self.local_steps < 1 or self.min_sites < 1:
            problems.append("rounds, local_steps and min_sites must each be at least 1")
        if not 0 <= self.table_steps <= MAX_TABLE_STEPS:
            problems.append(f"table_steps={self.table_steps} must be in [0, {MAX_TABLE_STEPS}] (0: off)")
        if self.table_steps and not self.gan_config.matching_weight:
            problems.append(f"table_steps={self.table_steps} fits the generator with the matching term, which "
                            "matching_weight = 0 switches off: set table_steps = 0 or a positive matching_weight")
        if self.noise_multiplier is not None and not self.noise_multiplier > 0:
            problems.append(f"noise_multiplier={self.noise_multiplier} must be positive")
        if self.aggregation not in AGGREGATION_RULES:
            problems.append(f"aggregation '{self.aggregation}' is not one of {', '.join(AGGREGATION_RULES)}")
        if self.transport_dtype not in TRANSPORT_DTYPES:
            problems.append(f"transport_dtype '{self.transport_dtype}' is not one of {', '.join(TRANSPORT_DTYPES)}")
        if self.site_noise_multiplier is not None:
            if not self.site_noise_multiplier > 0 or not self.site_clipping_norm > 0:
                problems.append("site_noise_multiplier and site_clipping_norm must be positive")
            if self.aggregation != "mean":
                # Flower's noise (sigma*C/K) is calibrated to a mean's sensitivity C/K; a coordinate-wise
                # median or trimmed mean can move by C when one site changes, so its epsilon would be understated.
                problems.append(f"site-level DP is calibrated for mean aggregation; with '{self.aggregation}' "
                                "its epsilon would be understated. Use --aggregation mean with site-level DP")
        if self.max_update_norm is not None and not self.max_update_norm > 0:
            problems.append(f"max_update_norm={self.max_update_norm} must be positive")
        if not (math.isfinite(self.marginals_noise_floor) and self.marginals_noise_floor >= 0):
            problems.append(f"marginals_noise_floor={self.marginals_noise_floor} must be 0 or more")
        if self.site_column is not None and not self.site_conditional:
            problems.append(f"site_column '{self.site_column}' needs site_conditional: the row's site is its slot")
        if not self.timeout > 0:
            problems.append(f"timeout={self.timeout} must be positive")
        if problems:
            raise ValueError("invalid federation settings: " + "; ".join(problems))
        return self

    def to_dict(self) -> dict[str, Any]:
        """Every setting, the seed included: for the coordinator's own saved run state only."""
        return self.model_dump(mode="json")

    def public_dict(self) -> dict[str, Any]:
        """The settings as releases and audit logs publish them: not the seed (whoever holds it
        can regenerate a simulation's noise), only whether there was one."""
        return {**self.model_dump(mode="json", exclude={"seed"}), "seeded": self.seed is not None}

    @classmethod
    def checked(cls, **values: object) -> FederationSettings:
        """Build the settings; what is wrong comes back as one plain message (a
        ConfigurationError), not pydantic's report format."""
        try:
            return cls(**values)  # type: ignore[arg-type]
        except ValidationError as exc:
            raise ConfigurationError(validation_problems(exc)) from None

    @classmethod
    def from_run_config(cls, config: Mapping[str, object]) -> FederationSettings:
        """Settings from a Flower run config (``[tool.flwr.app.config]``, kebab-case keys);
        keys it does not set keep the tuned defaults. ``round-timeout`` is ``timeout``."""
        refuse_seed_in_run_config(config, "the run config")
        names = {name.replace("_", "-"): name for name in cls.model_fields if name not in ("gan_config", "seed")}
        names["round-timeout"] = "timeout"
        # A run config has no None: an optional setting left "" is unset (the App's own default)
        values = {names[key]: value for key, value in config.items()
                  if key in names and not (value == "" and cls.model_fields[names[key]].default is None)}
        if isinstance(values.get("pairs_asked"), str):  # a run config holds no list: 'first:second,...'
            values["pairs_asked"] = split_pairs_text(str(values["pairs_asked"]))
        return cls.checked(**values)


def check_against_schema(settings: FederationSettings, schema: Schema) -> None:
    """What the settings must agree with in the schema: a reviewed schema (or the settings' leave),
    a site column that is one of its categorical columns other than the outcome, pairs asked of
    its measured columns. The coordinator checks it before contacting any site, and `fedsyn server
    run` before it submits a run to Flower (helper-116: a bad pair was refused only inside the
    ServerApp, after Flower had created the run and printed its own exit code). Raises
    ConfigurationError."""
    schema.require_reviewed(settings.allow_unreviewed_schema)
    if settings.site_column is not None and (settings.site_column not in schema.column_names
                                             or not schema.column(settings.site_column).is_categorical
                                             or settings.site_column == schema.outcome):
        raise ConfigurationError(f"site_column '{settings.site_column}' must be a categorical column of the "
                                 "schema other than the outcome")
    try:
        asked_pairs(schema, settings.pairs_asked, settings.site_column)
    except ValueError as exc:
        raise ConfigurationError(f"pairs_asked: {exc}") from None


def refuse_seed_in_run_config(config: Mapping[str, object], where: str) -> None:
    """A deployment's run config holds no secret: Flower hands it with the run to every
    hospital's SuperNode, keeps it in the SuperLink's database, and ``flwr run`` shows it to
    anyone who lists the machine's processes. A seed there would be read by all of them (the
    fifth review's F3); a deployed coordinator draws from the operating system's entropy."""
    if "seed" in config:
        raise ConfigurationError(f"{where}: 'seed' is a secret and a run config is not: Flower sends it to every "
                                 "hospital with the run and keeps it in the SuperLink's database. Remove it (a "
                                 "deployed coordinator draws from the operating system's entropy; seeded runs are "
                                 "for simulations: fedsyn simulate --seed)")

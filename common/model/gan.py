"""``DPTabularGAN``: a record-level differentially private tabular GAN for one site.

Follows scikit-learn's conventions (a ``BaseEstimator``: ``get_params``, ``set_params``,
``sklearn.clone``): parameters in ``__init__``, stored as given (defaults are resolved in
``fit``), state learned in ``fit`` and set only when it succeeds, then ``sample`` / ``save`` /
``load``. The whole privacy budget ``epsilon`` covers both mechanisms that read private rows:
the noisy marginals (a share ``marginals_share``) and DP-SGD on the discriminator (the rest,
composed with an accountant, not added).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from sklearn.base import BaseEstimator

from fedsyn.data.rules import Condition
from fedsyn.data.schema import Schema, read_as_levels
from fedsyn.data.tables import rows_digest, typed_by_schema
from fedsyn.data.validation import require_valid
from fedsyn.errors import ConfigurationError
from fedsyn.model.checkpoint import load_checkpoint, save_checkpoint
from fedsyn.model.config import GANConfig
from fedsyn.model.encoder import TableEncoder
from fedsyn.model.training import GANTrainer, StepLosses
from fedsyn.privacy.accounting import (
    AccountantName,
    PrivacyEvent,
    PrivacyLedger,
    calibrate_noise_multiplier,
)
from fedsyn.privacy.budget import (
    DP_SGD,
    MARGINALS_SHARE,
    PAIRS_SHARE,
    delta_fits,
    is_budget,
    is_pairs_share,
    marginals_noise,
    pairs_allowed,
)
from fedsyn.privacy.marginals import exact_counts, marginals_event, noisy_marginals, summed_tables
from fedsyn.privacy.postprocessing import NOISE_FLOOR
from fedsyn.privacy.randomness import (
    bound_to_inputs,
    fresh_nonce,
    mechanism_stream,
    numpy_generator,
    torch_generator,
)


class NotFittedError(ConfigurationError, RuntimeError):
    pass


def check_delta(delta: float, n_rows: int) -> None:
    if not delta_fits(delta, n_rows):
        raise ValueError(
            f"delta={delta:g} must be below 1/n = {1.0 / n_rows:.2e} for {n_rows} rows; a larger delta "
            "allows leaking whole records with that probability. Use a smaller delta (e.g. 1e-6)."
        )


@dataclass(frozen=True)
class FitPlan:
    """What a fit spends its budget on (:meth:`DPTabularGAN.plan`); None where it trains without DP."""

    rows: int
    batch_size: int
    marginals_noise: float | None  # the round-0 tables' noise multiplier
    sample_rate: float
    steps: int
    noise_multiplier: float | None  # DP-SGD's


class DPTabularGAN(BaseEstimator):  # type: ignore[misc]
    """Conditional GAN whose discriminator is trained with DP-SGD on the private rows.

    Parameters
    ----------
    schema: the public data contract.
    epsilon: total privacy budget for this fit; ``None`` trains without DP (baselines only).
    delta: target delta; must be below 1/n.
    epochs: planned passes over the data (in expectation); training stops earlier if the
        budget would otherwise be exceeded.
    config: the networks and their training (``None``: :class:`GANConfig`'s defaults).
    marginals_share: fraction of epsilon spent, on its own, on the noisy marginals that
        define the numeric quantile maps and the conditional sampling frequencies.
    pairs_share: share of the marginals' release spent on pair tables of other columns,
        chosen with DP (:mod:`fedsyn.privacy.pairs`; 0: outcome tables only). Needs the RDP
        accountant; with ``accountant="prv"`` no pairs are measured.
    noise_multiplier: fix DP-SGD's noise instead of calibrating it to ``epochs``; training
        then stops at the last step the budget affords (or after ``epochs``).
    marginals_noise_floor: numeric counts are coarsened, per outcome class, until they beat
        this many noise std (:meth:`Marginals.without_noise_floor`, post-processing; 0: off),
        as the federated coordinator does.
    seed: ``None`` (the default): every random draw comes from operating-system entropy. A
        seed makes a fit reproducible only together with its ``stream_nonce``: each fit draws
        a fresh random nonce (``stream_nonce_``) unless one is given, so two fits with one
        seed never share noise. Neither is ever saved with the model; keep both private.
    stream_nonce: repeat an earlier seeded fit exactly (its ``stream_nonce_``), on the same rows
        and parameters: on any others the fit draws unrelated noise.

    Attributes (set by ``fit`` or ``load``, as in scikit-learn)
    ----------
    trainer_: the trained networks; ledger_: what the fit spent, charged before each
    mechanism ran; noise_multiplier_: DP-SGD's noise; history_: losses per step; n_rows_:
    the training rows (public: the published sample rate discloses it); stream_nonce_: the
    nonce this fit's streams were keyed by (with ``seed``; private).
    """

    def __init__(
        self,
        schema: Schema,
        epsilon: float | None = 1.0,
        delta: float = 1e-5,
        *,
        epochs: float = 30.0,
        config: GANConfig | None = None,
        marginals_share: float = MARGINALS_SHARE,
        pairs_share: float = PAIRS_SHARE,
        noise_multiplier: float | None = None,
        marginals_noise_floor: float = NOISE_FLOOR,
        accountant: AccountantName = "rdp",
        device: str = "cpu",
        seed: int | None = None,
        stream_nonce: str | None = None,
        allow_unreviewed_schema: bool = False,
    ):
        self.schema = schema
        self.epsilon = epsilon
        self.delta = delta
        self.epochs = epochs
        self.config = config
        self.marginals_share = marginals_share
        self.pairs_share = pairs_share
        self.noise_multiplier = noise_multiplier
        self.marginals_noise_floor = marginals_noise_floor
        self.accountant = accountant
        self.device = device
        self.seed = seed
        self.stream_nonce = stream_nonce
        self.allow_unreviewed_schema = allow_unreviewed_schema

    def __repr__(self) -> str:
        fitted = "fitted" if getattr(self, "trainer_", None) is not None else "not fitted"
        return (f"DPTabularGAN(schema={self.schema.name!r}, epsilon={self.epsilon}, delta={self.delta:g}, "
                f"epochs={self.epochs}, {fitted})")

    # -- fitting ----------------------------------------------------------------------------

    def fit(self, frame: pd.DataFrame, on_step: Callable[[int, StepLosses], None] | None = None) -> DPTabularGAN:
        if self.epsilon is not None and not is_budget(self.epsilon):
            raise ValueError(f"epsilon={self.epsilon} must be a positive number")
        if not is_pairs_share(self.pairs_share):
            raise ValueError(f"pairs_share={self.pairs_share} must be 0 (no pair tables) or in [0.01, 1)")
        if not (math.isfinite(self.marginals_noise_floor) and self.marginals_noise_floor >= 0):
            raise ValueError(f"marginals_noise_floor={self.marginals_noise_floor} must be 0 (off) or more")
        self.schema.require_reviewed(self.allow_unreviewed_schema)
        require_valid(frame, self.schema, source="training data")
        n_rows = len(frame)
        check_delta(self.delta, n_rows)
        plan = self.plan(n_rows)
        ledger = PrivacyLedger(self.delta, self.accountant)
        nonce = fresh_nonce(self.stream_nonce)  # a fresh stream per fit, even with a seed
        # A given nonce repeats the fit on these rows and settings only (bound_to_inputs).
        key = bound_to_inputs(nonce, rows_digest(frame, self.schema), self.schema.model_dump_json(),
                              repr(self._public_params()))
        sigma = plan.marginals_noise
        if self.epsilon is None or sigma is None:
            marginals = exact_counts(frame, self.schema)  # non-private baseline: exact statistics
        else:
            ledger.charge(marginals_event(sigma), self.epsilon)  # before the histograms are computed
            pairs_share = self.pairs_share if pairs_allowed(self.accountant) else 0.0
            marginals = noisy_marginals(frame, self.schema, sigma,
                                        numpy_generator(self.seed, "fit", key, "marginals"), pairs_share)
            marginals = summed_tables(self.schema, [marginals], self.marginals_noise_floor)
        config = self.config or GANConfig()
        encoder = TableEncoder(self.schema, marginals)
        trainer = GANTrainer(encoder, config, self.device,
                             torch_generator(self.seed, "fit", key, DP_SGD, device=self.device))
        data = torch.as_tensor(encoder.encode(frame), device=trainer.device)
        sample_rate, steps, noise_multiplier = plan.sample_rate, plan.steps, plan.noise_multiplier
        if self.epsilon is not None and noise_multiplier is not None:
            # Charged in full before the first step runs: a crash mid-training over-counts, never forgets.
            ledger.charge(PrivacyEvent(DP_SGD, noise_multiplier, sample_rate, steps), self.epsilon)
        history = trainer.train(data, steps, sample_rate, noise_multiplier, on_step,
                                mechanism_rng=mechanism_stream(self.seed, "fit", key, DP_SGD))
        # Fitted state only once the fit has succeeded: a failed fit leaves the estimator as it was.
        self.noise_multiplier_, self.history_, self.n_rows_ = noise_multiplier, history, n_rows
        self.stream_nonce_, self.trainer_, self.ledger_ = nonce, trainer, ledger
        return self

    def _public_params(self) -> list[tuple[str, object]]:
        """Every parameter that shapes what the fit draws (its budget, plan and networks), the
        schema, seed, nonce and device aside."""
        return sorted((name, value) for name, value in self.get_params().items()
                      if name not in {"schema", "seed", "stream_nonce", "device"})

    def plan(self, n_rows: int) -> FitPlan:
        """What a fit on ``n_rows`` rows will spend, before anything is: the noise multiplier of
        its round-0 tables, DP-SGD's sample rate and noise multiplier, and its steps (the planned
        epochs, or fewer where the budget ends first). :meth:`fit` spends exactly this plan."""
        config = self.config or GANConfig()
        sample_rate = min(1.0, config.batch_size / n_rows)
        planned = max(1, math.ceil(self.epochs / sample_rate))
        if self.epsilon is None:
            return FitPlan(n_rows, config.batch_size, None, sample_rate, planned, None)
        tables = marginals_noise(self.epsilon, self.marginals_share, self.delta, self.accountant)
        ledger = PrivacyLedger(self.delta, self.accountant, [marginals_event(tables)])  # the fit's after round 0
        noise = self.noise_multiplier or calibrate_noise_multiplier(self.epsilon, self.delta, sample_rate, planned,
                                                                    ledger.events, self.accountant)
        steps = ledger.affordable_steps(self.epsilon, noise, sample_rate, planned)
        return FitPlan(n_rows, config.batch_size, tables, sample_rate, steps, noise)

    # -- using a fitted model ---------------------------------------------------------------

    def _fitted(self) -> GANTrainer:
        if getattr(self, "trainer_", None) is None:
            raise NotFittedError("call fit() or load() before sample()")
        return self.trainer_

    def sample(self, n: int, condition: dict[str, object] | None = None,
               drop_rule_violations: bool = False, seed: int | None = None) -> pd.DataFrame:
        """``n`` synthetic rows, typed by the schema (:func:`typed_by_schema`: 0/1 codes as integers,
        other categories as categoricals); ``condition`` fixes at most one categorical column
        (``{'death': 'dead'}``, generated given it) and any numeric ranges (``{'age': (60, 80)}``,
        rows drawn until enough fall inside).

        With ``drop_rule_violations`` rows breaking the schema's rules are replaced; how many
        were dropped is in ``frame.attrs['dropped_rule_violations']``. ``seed`` makes this
        draw reproducible (sampling is post-processing: it spends no privacy).
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n={n!r}: ask for a whole number of rows, 0 or more")
        trainer = self._fitted()
        rng = torch_generator(seed, "sample", device=trainer.device) if seed is not None else None
        categorical, ranges = self._split_condition(condition or {})
        rules = self.schema.rules if drop_rule_violations else None
        frame, dropped = trainer.sample_frame(n, categorical or None, rules, ranges, rng=rng)
        frame = typed_by_schema(frame, self.schema)
        frame.attrs["dropped_rule_violations"] = dropped
        return frame

    def _split_condition(self, condition: dict[str, object]) -> tuple[dict[str, object], list[Condition]]:
        """The categorical value the generator is conditioned on, and the numeric ranges kept."""
        categorical: dict[str, object] = {}
        ranges: list[Condition] = []
        for name, wanted in condition.items():
            column = self.schema.column(name)  # KeyError names an unknown column
            if column.is_categorical:  # a declared spelling ('F' for 'female') asks for its level, as in an extract
                categorical[name] = read_as_levels(pd.Series([wanted], dtype=object), column).iloc[0]
            elif isinstance(wanted, (tuple, list)) and len(wanted) == 2:
                low, high = float(wanted[0]), float(wanted[1])
                lower, upper = column.bounds
                if not (low <= high and low <= upper and high >= lower):
                    raise ValueError(f"condition {name}=({wanted[0]}, {wanted[1]}) holds no value between '{name}''s "
                                     f"public bounds [{lower:g}, {upper:g}]: give a range (low, high) that overlaps "
                                     "them")
                ranges.append(Condition(column=name, between=(low, high)))
            else:
                raise ValueError(f"condition on numeric column '{name}' must be a range (low, high), e.g. (60, 80)")
        if len(categorical) > 1:
            raise ValueError(f"condition fixes {sorted(categorical)}: the generator is conditioned on one categorical "
                             "column at a time (numeric ranges may be added)")
        return categorical, ranges

    def privacy_spent(self) -> tuple[float, float]:
        """(epsilon, delta) spent by ``fit``; epsilon is infinite for a non-private model. For a
        loaded federated release: the largest per-site epsilon (each site at its own delta;
        ``privacy_report.json`` has them all)."""
        if self.epsilon is None:
            return math.inf, 0.0
        if getattr(self, "ledger_", None) is not None:
            return self.ledger_.epsilon(), self.delta
        if getattr(self, "trainer_", None) is not None:  # a federated release
            return float(self.epsilon), self.delta
        raise NotFittedError("nothing spent yet: the model is not fitted")

    def privacy_report(self, seeded: bool) -> dict[str, Any]:
        """What a single-site fit publishes beside its model (``fedsyn fit`` writes it as
        ``privacy_report.json``): its (epsilon, delta), its ledger, the schema's columns read off
        the data without review, and the row count, public because the ledger's DP-SGD sample
        rate is batch size / rows. A federated release's report is
        :func:`fedsyn.server.release.privacy_report`'s."""
        spent, spent_delta = self.privacy_spent()
        return {"epsilon": spent, "delta": spent_delta, "seeded": seeded,
                "ledger": self.ledger_.to_dict() if getattr(self, "ledger_", None) else None,
                "schema_unreviewed_columns": self.schema.unreviewed_columns,
                "public_facts": {"rows": self.n_rows_, "why_public": "the published DP-SGD sample rate is batch "
                                 "size / rows (ledger and model.pt), so the row count is disclosed"}}

    def save(self, path: str | Path) -> None:
        """Write the fitted model in fedsyn's one checkpoint format (see :mod:`fedsyn.model.checkpoint`)."""
        trainer = self._fitted()
        save_checkpoint(path, self.schema, trainer, privacy={"ledger": self.ledger_.to_dict() if getattr(
            self, "ledger_", None) else None}, params={
            "epsilon": self.epsilon, "delta": self.delta, "epochs": self.epochs,
            "marginals_share": self.marginals_share, "noise_multiplier": self.noise_multiplier,
            "marginals_noise_floor": self.marginals_noise_floor,
            "accountant": self.accountant}, with_discriminator=True)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> DPTabularGAN:
        """Load a saved model or a federated release's ``generator.pt``, ready to sample."""
        checkpoint = load_checkpoint(path, device)
        config = checkpoint.trainer.config
        if checkpoint.params is not None:
            model = cls(checkpoint.schema, config=config, device=device, **checkpoint.params)
        else:  # a federated release: its privacy is per site, summarised in the checkpoint
            model = cls(checkpoint.schema, epsilon=checkpoint.privacy["max_epsilon_any_site"],
                        delta=checkpoint.privacy["delta"], config=config, device=device)
        model.trainer_ = checkpoint.trainer
        if checkpoint.privacy.get("ledger") is not None:
            model.ledger_ = PrivacyLedger.from_dict(checkpoint.privacy["ledger"])
        return model


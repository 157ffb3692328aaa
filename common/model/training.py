"""The GAN's training steps: DP-SGD for the discriminator, post-processing for the generator.

Only the discriminator's real-data loss touches patient records, and it is computed per
record, clipped and noised (:func:`fedsyn.privacy.dp_sgd.private_gradient`). The fake-data
term and the whole generator update depend only on already-private parameters, so they
are plain autograd. The same :class:`GANTrainer` runs a single-site fit and a federated
client's local steps.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from fedsyn.data.rules import Condition, Rule, impose_missing_by_design, violation_mask
from fedsyn.model.calibration import SlotCalibration
from fedsyn.model.conditioning import ConditionSampler
from fedsyn.model.config import GANConfig
from fedsyn.model.encoder import TableEncoder
from fedsyn.model.matching import TableMatcher
from fedsyn.model.max_entropy import numbers_as_measured
from fedsyn.model.networks import Discriminator, Generator, reset_parameters
from fedsyn.model.raking import POOL_FACTOR, RakingTargets, outcome_classes, release_weights, systematic_picks
from fedsyn.privacy.dp_sgd import poisson_sample, private_gradient
from fedsyn.privacy.marginals import Marginals, plausible_counts
from fedsyn.privacy.randomness import numpy_from_torch, torch_generator

RAKED_CHUNK = 8192  # released rows per raked pool at most (a pool holds POOL_FACTOR times as many)


def _chunk_sizes(n: int, chunk: int) -> list[int]:
    """``n`` split into the fewest near-equal parts of at most ``chunk`` (no tiny last pool)."""
    parts = math.ceil(n / chunk) if n > 0 else 0
    return [n // parts + (1 if index < n % parts else 0) for index in range(parts)]


def padded(data: torch.Tensor, rows: int | None) -> torch.Tensor:
    """``data`` followed by empty slots (zeros) up to ``rows`` rows (as it is when None or not
    longer): what a site samples over when its policy sets ``max_rows``."""
    if rows is None or rows <= data.shape[0]:
        return data
    return torch.cat([data, data.new_zeros((rows - data.shape[0], data.shape[1]))])


@dataclass
class StepLosses:
    discriminator: float
    generator: float


@dataclass(frozen=True)
class ReleaseSlots:
    """What a release draws its site slots by (:meth:`GANTrainer.set_release_slots`), kept as
    one record so that a checkpoint stores exactly what it was set with: the sites' noisy
    ``totals`` and tables (DP outputs), the table's own ``site_column`` (if any) and the summed
    tables' cell noise std (public; None: not known)."""

    totals: list[float]
    marginals: list[Marginals]
    site_column: str | None
    table_noise_std: float | None


class GANTrainer:
    """Owns G, D and their optimisers for one encoder; data lives on ``device`` once.

    ``rng`` is this trainer's own generator: it initialises the networks and is the stream of
    any call not handed one. Conditions, latent and Gumbel noise draw from the stream of the
    call (``train(..., rng=...)``, ``generate(..., rng=...)``), never from PyTorch's global
    generator, and nobody reassigns it. The DP mechanism's Poisson sample and Gaussian noise
    draw from the call's ``mechanism_rng``, a NumPy generator with 128 bits of entropy (a
    PyTorch generator keeps 32 of its seed: :mod:`fedsyn.privacy.dp_sgd`). A mechanism's owner
    hands its fresh streams to the call (see :mod:`fedsyn.privacy.randomness`); ``None`` draws
    one from operating-system entropy.

    What belongs to one training call (the stream, the site slot it generates for, the real-data
    loss's divisor) is an argument of :meth:`train`, never an attribute a caller sets: the
    trainer's state is set by its constructor, by loading arrays and by :meth:`set_release_slots`.
    """

    def __init__(self, encoder: TableEncoder, config: GANConfig, device: str | torch.device = "cpu",
                 rng: torch.Generator | None = None, condition_marginals: Marginals | None = None):
        self.encoder = encoder
        self.config = config
        self.device = torch.device(device)
        self.rng = rng if rng is not None else torch_generator(None, device=self.device)
        if self.rng.device != self.device:
            raise ValueError(f"the trainer's generator is on {self.rng.device}, its networks on {self.device}")
        # Generated rows' conditions follow ``condition_marginals`` (a site's own noisy marginals
        # during its local training) while the encoding always uses the encoder's (global) ones.
        self.conditions = ConditionSampler(encoder, self.device, marginals=condition_marginals)
        self.generator = Generator(config.latent_dim, self.conditions.dim + config.site_slots,
                                   config.generator_hidden, encoder.spans).to(self.device)
        # Release: per-slot draw weights and condition samplers (see :meth:`set_release_slots`).
        self.release_slots: ReleaseSlots | None = None
        self.calibration: SlotCalibration | None = None  # each slot's departure, once the slots' tables are set
        self.slot_weights: torch.Tensor | None = None
        self.slot_conditions: list[ConditionSampler] | None = None
        # The table's own site column's values by slot, if it has one (see :meth:`set_release_slots`).
        self.slot_site_values: list[torch.Tensor] | None = None
        # The discriminator is told the slot too: at site k it compares site k's rows with rows
        # generated for site k, so "from another site" is never its cue for "generated".
        self.discriminator = Discriminator(encoder.dim, self.conditions.dim + config.site_slots,
                                           config.discriminator_hidden).to(self.device)
        reset_parameters(self.generator, self.rng)
        reset_parameters(self.discriminator, self.rng)
        # Sampling uses an exponential moving average of the generator's weights: free
        # post-processing of DP outputs that damps the oscillation of GAN training.
        self.sampler = copy.deepcopy(self.generator).requires_grad_(False)
        # The weight the average has gathered so far (Adam's bias correction): its first update
        # replaces the untrained initial weights instead of keeping decay**steps of them (a
        # 460-step fit kept 10 % and released creatinine missing in 18-21 % of rows, not 17 %).
        self._sampler_mass = 0.0
        self.generator_optimizer = torch.optim.Adam(self.generator.parameters(), lr=config.generator_lr,
                                                    betas=config.betas)
        self.discriminator_optimizer = torch.optim.Adam(self.discriminator.parameters(),
                                                        lr=config.discriminator_lr, betas=config.betas)
        self._categorical_ranges = [(s.start, s.end) for _, s in encoder.categorical_spans()]
        self.matcher = TableMatcher(encoder, self.conditions, self.device) if config.matching_weight else None

    # -- training -------------------------------------------------------------------------

    def _slot_input(self, cond: torch.Tensor, slots: torch.Tensor | int | None) -> torch.Tensor:
        """The generator's condition input: ``cond``, then the one-hot site slot (if any)."""
        if self.config.site_slots == 0:
            return cond
        onehot = cond.new_zeros((cond.shape[0], self.config.site_slots))
        if slots is None:  # no site named (e.g. a single-site caller): the slots' average
            onehot[:] = 1.0 / self.config.site_slots
        elif isinstance(slots, int):
            onehot[:, slots] = 1.0
        else:
            onehot[torch.arange(cond.shape[0], device=cond.device), slots] = 1.0
        return torch.cat([cond, onehot], dim=1)

    def _fake(self, n: int, cond: torch.Tensor, rng: torch.Generator, slot: int | None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn((n, self.config.latent_dim), generator=rng, device=self.device)
        raw = self.generator(noise, self._slot_input(cond, slot))
        return raw, self.generator.activate(raw, self.config.gumbel_tau, rng)

    def real_gradient(self, data: torch.Tensor, sample_rate: float, noise_multiplier: float | None,
                      slot: int | None = None, expected_batch: float | None = None,
                      mechanism_rng: np.random.Generator | None = None, real_rows: int | None = None
                      ) -> dict[str, torch.Tensor]:
        """The discriminator's gradient of the real-data loss: the only term that reads records.

        A Poisson sample of ``data``; with ``noise_multiplier`` every record's whole gradient is
        clipped and Gaussian noise added (DP-SGD), ``None`` trains without DP (baselines
        only). The sum is divided by a public number, never by anything computed from
        ``data``: the row count is private, and dividing by it would leak it outside the
        Gaussian mechanism. That number is ``expected_batch`` if given (a federated site's
        expected Poisson batch from its own noisy row count, a DP output, so the real and
        generated terms of the loss keep equal weight), else the nominal ``config.batch_size``.
        Every draw here (the sample, each record's condition column, the noise) comes from
        ``mechanism_rng`` (None: fresh entropy): a draw per sampled record from another stream
        would leave that stream counting the batch.

        With ``real_rows``, ``data`` is padded (:func:`padded`): its first ``real_rows`` rows are
        records, the rest empty slots. The sample is drawn over every row and the empty slots
        sampled go through the same computation and contribute 0, so the step's work depends
        on the padded length only (a site's public ``max_rows``), never on its row count.
        """
        mechanism_rng = mechanism_rng if mechanism_rng is not None else np.random.default_rng()
        normaliser = float(expected_batch or self.config.batch_size)
        picks = poisson_sample(data.shape[0], sample_rate, mechanism_rng, self.device)
        present = None if real_rows is None else picks < real_rows
        real = data[picks]
        real_cond = self._slot_input(self.conditions.from_real(real, mechanism_rng), slot)
        if noise_multiplier is None:
            params = OrderedDict(self.discriminator.named_parameters())
            scores = self.discriminator(real, real_cond) if present is None \
                else self.discriminator(real[present], real_cond[present])
            real_loss = F.softplus(-scores).sum() / normaliser
            return dict(zip(params, torch.autograd.grad(real_loss, list(params.values()))))
        return private_gradient(
            self.discriminator, lambda score: F.softplus(-score).sum(), (real, real_cond),
            noise_multiplier=noise_multiplier, max_grad_norm=self.config.max_grad_norm,
            expected_batch_size=normaliser, generator=mechanism_rng, present=present,
        )

    def discriminator_step(self, data: torch.Tensor, sample_rate: float, noise_multiplier: float | None,
                           rng: torch.Generator | None = None, slot: int | None = None,
                           expected_batch: float | None = None, mechanism_rng: np.random.Generator | None = None,
                           real_rows: int | None = None) -> float:
        """One discriminator update: the private real-data gradient (:meth:`real_gradient`) plus
        the fake-data term, which reads no record (``config.batch_size`` generated rows, a
        public number)."""
        rng = rng if rng is not None else self.rng
        real_grads = self.real_gradient(data, sample_rate, noise_multiplier, slot, expected_batch, mechanism_rng,
                                        real_rows)
        fake_cond = self.conditions.sample(self.config.batch_size, rng)
        with torch.no_grad():
            _, fake = self._fake(fake_cond.shape[0], fake_cond, rng, slot)
        params = OrderedDict(self.discriminator.named_parameters())
        fake_loss = F.softplus(self.discriminator(fake, self._slot_input(fake_cond, slot))).mean()
        fake_grads = torch.autograd.grad(fake_loss, list(params.values()))
        for (name, param), fake_grad in zip(params.items(), fake_grads):
            param.grad = real_grads[name] + fake_grad
        self.discriminator_optimizer.step()
        # Only the fake-data term is reported: the real-data loss is a private statistic.
        return float(fake_loss.detach())

    def generator_step(self, rng: torch.Generator | None = None, slot: int | None = None) -> float:
        rng = rng if rng is not None else self.rng
        cond = self.conditions.sample(self.config.batch_size, rng)
        raw, fake = self._fake(cond.shape[0], cond, rng, slot)
        loss = F.softplus(-self.discriminator(fake, self._slot_input(cond, slot))).mean()
        loss = loss + self.conditions.cross_entropy(raw, cond, self._categorical_ranges)
        if self.matcher is not None:
            loss = loss + self.config.matching_weight * self._matching_loss(rng)
        self.generator_optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        self.generator_optimizer.step()
        self.discriminator.zero_grad(set_to_none=True)
        self._update_sampler(self.config.generator_ema)
        return float(loss.detach())

    def _matching_loss(self, rng: torch.Generator) -> torch.Tensor:
        """The matching term on a batch drawn as the release draws its rows of each outcome
        class (site slot by the sites' noisy shares of the class): the release, not one
        site's rows, is what must reproduce the summed tables. Classes get equal parts of
        the batch, so a rare class is matched on as many rows as a common one."""
        if self.matcher is None:
            raise RuntimeError("no matcher: matching_weight is 0")
        outcome = self.conditions.outcome
        if outcome is None:
            cond, slots = self._release_conditions(self.config.batch_size, None, rng)
        else:
            values = self.conditions.values[self.conditions.columns.index(outcome)]
            size = max(2, self.config.batch_size // len(values))
            parts = [self._release_conditions(size, {outcome: value}, rng) for value in values]
            cond = torch.cat([c for c, _ in parts])
            slots = torch.cat([s for _, s in parts if s is not None]) if parts[0][1] is not None else None
        noise = torch.randn((cond.shape[0], self.config.latent_dim), generator=rng, device=self.device)
        return self.matcher.loss(self.generator(noise, self._slot_input(cond, slots)), cond, slots)

    def fit_tables(self, steps: int, rng: torch.Generator | None = None) -> None:
        """``steps`` updates of the generator on the matching term alone, then the sampling copy
        set to the result: the noisy tables' one-way distributions by outcome class (and each
        slot's own tables) reach the generator before any site trains on it, as GEM and MargNet
        train a generator on measured marginals. It reads the tables only (post-processing).

        Why: a federated run gives the generator a few hundred adversarial steps, and its
        first rounds are spent far from the tables. On the bench's nwtco table the released
        time to relapse of relapsed patients averaged 842-1766 days where the noisy tables said
        about 170 (real rows 389). It steadied that table and cost others their declared
        outcome, so the coordinator runs it only when asked (``table_steps``; docs/benchmarks.md).
        The sampling copy carries no averaging weight: round 1's aggregate replaces it."""
        if self.matcher is None or steps <= 0:
            return
        rng = rng if rng is not None else self.rng
        for _ in range(steps):
            loss = self._matching_loss(rng)
            self.generator_optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            self.generator_optimizer.step()
        self.sampler.load_state_dict(self.generator.state_dict())

    @torch.no_grad()
    def _update_sampler(self, decay: float) -> None:
        """Move the sampling copy towards the generator: an exponential moving average of the
        generators since the copy started, weighted as if it had started from nothing."""
        self._sampler_mass = decay * self._sampler_mass + (1.0 - decay)
        for average, current in zip(self.sampler.parameters(), self.generator.parameters()):
            average.lerp_(current, (1.0 - decay) / self._sampler_mass)

    def train(
        self,
        data: torch.Tensor,
        steps: int,
        sample_rate: float,
        noise_multiplier: float | None,
        on_step: Callable[[int, StepLosses], None] | None = None,
        slot: int | None = None,
        rng: torch.Generator | None = None,
        expected_batch: float | None = None,
        mechanism_rng: np.random.Generator | None = None,
        real_rows: int | None = None,
    ) -> list[StepLosses]:
        """Run ``steps`` paired D/G updates. The caller has already checked the budget.

        With ``config.site_slots`` every generated row is generated for site ``slot``. The Poisson
        samples and the DP noise come from ``mechanism_rng`` (the mechanism's own stream; None:
        fresh entropy), every other draw from ``rng`` (default: the trainer's). ``expected_batch``
        divides the real-data loss (public; see :meth:`real_gradient`), and ``real_rows`` says
        where a padded ``data``'s empty slots begin (see :meth:`real_gradient`)."""
        stream = rng if rng is not None else self.rng
        if self.config.site_slots and not (isinstance(slot, int) and 0 <= slot < self.config.site_slots):
            raise ValueError(f"site slot {slot!r} is not one of the {self.config.site_slots} slots")
        slot = slot if self.config.site_slots else None
        history = []
        self.generator.train()
        self.discriminator.train()
        for step in range(steps):
            losses = StepLosses(self.discriminator_step(data, sample_rate, noise_multiplier, stream, slot,
                                                        expected_batch, mechanism_rng, real_rows),
                                self.generator_step(stream, slot))
            history.append(losses)
            if on_step is not None:
                on_step(step, losses)
        return history

    # -- sampling -------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, n: int, condition: dict[str, object] | None = None, chunk: int = 65536,
                 rng: torch.Generator | None = None) -> np.ndarray:
        """Encoded synthetic rows; categorical blocks are hard one-hots. Draws from ``rng``
        (default: the trainer's own stream).

        Each slot's numeric values carry its site's departure from the federation
        (:mod:`fedsyn.model.calibration`). Rows not conditioned on a value
        are drawn from a pool whose numeric columns relate only as the tables say
        (:mod:`fedsyn.model.max_entropy`), raked to the sites' noisy tables (:mod:`fedsyn.model.raking`), in
        chunks of ``RAKED_CHUNK`` rows so that a pool stays small; a condition changes the mix the
        tables describe, so conditioned rows are not."""
        rng = rng if rng is not None else self.rng
        if condition is not None and len(condition) != 1:
            raise ValueError("condition must fix exactly one categorical column, e.g. {'death': 'dead'}")
        targets = self._raking_targets() if condition is None else None
        if targets is not None:
            chunk = min(chunk, RAKED_CHUNK)
        parts = []
        for size in _chunk_sizes(n, chunk):
            if targets is None:
                parts.append(self._draw(size, condition, rng)[0])
                continue
            pool, slots = self._draw(size * POOL_FACTOR, None, rng)
            in_slot = slots.cpu().numpy() if slots is not None else np.zeros(len(pool), dtype=int)
            frame = self._raked_pool(pool, in_slot, targets, rng)
            weights = release_weights(frame, self.encoder.schema, in_slot, targets, size)
            offset = float(torch.rand(1, generator=rng, device=self.device))
            parts.append(pool[torch.as_tensor(systematic_picks(weights, size, offset), device=self.device)])
        return torch.cat(parts).cpu().numpy() if parts else np.zeros((0, self.encoder.dim), dtype=np.float32)

    def _raked_pool(self, pool: torch.Tensor, slots: np.ndarray, targets: RakingTargets,
                    rng: torch.Generator) -> pd.DataFrame:
        """The rows the raking reads of ``pool`` (this draw's own, in slots ``slots``): decoded,
        their missing-by-design cells imposed, then each numeric column related to the others
        only as the sites' tables say (:mod:`fedsyn.model.max_entropy`), ``pool``'s blocks moved
        alike in place. The permutations are drawn from the release's ``rng``; they read the
        imposed cells, as the raking does (moved before, a pair with a column a rule empties
        lost its table: helper-111)."""
        schema = self.encoder.schema
        frame = impose_missing_by_design(self.encoder.decode(pool.cpu().numpy()), schema.rules)
        if not self.config.numbers_as_measured:
            return frame
        classes = outcome_classes(frame, schema)
        strata = slots.astype(np.int64) * (int(classes.max(initial=0)) + 1) + classes
        pairs = sorted({pair for tables in targets.marginals for pair in tables.pairs})
        bounds = {name: values for tables in reversed(targets.marginals) for name, values in tables.pair_bounds.items()}
        frame, orders = numbers_as_measured(frame, schema, strata, pairs, bounds, numpy_from_torch(rng))
        for span in self.encoder.spans:
            if span.column in orders:
                pool[:, span.start:span.end] = pool[torch.as_tensor(orders[span.column], device=self.device),
                                                    span.start:span.end]
        return frame

    def _draw(self, size: int, condition: dict[str, object] | None, rng: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``size`` encoded rows straight from the sampling copy, and their site slots (if any)."""
        cond, slots = self._release_conditions(size, condition, rng)
        noise = torch.randn((size, self.config.latent_dim), generator=rng, device=self.device)
        rows = self.sampler.sample(self.sampler(noise, self._slot_input(cond, slots)), rng)
        # The rest of the row was generated given the condition; the conditioned column
        # itself holds exactly the conditioned value.
        rows = self.conditions.impose(rows, cond)
        if slots is not None and self.site_column is not None and self.site_column not in (condition or {}):
            rows = self._impose_site_values(rows, slots, rng)
        if slots is not None and self.calibration is not None:
            # The summed tables describe each outcome class, not the rows of another condition.
            rows = self.calibration(rows, slots, trusted=condition is None
                                    or set(condition) == {self.encoder.schema.outcome})
        return rows, slots

    def _raking_targets(self) -> RakingTargets | None:
        """Each slot's release share and noisy tables (their pair tables pooled; no slots: the
        encoder's tables, a single site's own); None for a model with slots whose tables were
        never set."""
        if self.release_slots is not None and self.slot_weights is not None:
            shares, marginals = self.slot_weights.cpu().numpy().astype(float), self.release_slots.marginals
        elif self.config.site_slots == 0:
            shares, marginals = np.ones(1), [self.encoder.marginals]
        else:
            return None
        return RakingTargets.of(shares, marginals)

    @property
    def site_column(self) -> str | None:
        """The table's own column saying which hospital a row comes from, if the slots name one."""
        return None if self.release_slots is None else self.release_slots.site_column

    def set_release_slots(self, totals: list[float], marginals: list[Marginals], site_column: str | None = None,
                          table_noise_std: float | None = None) -> None:
        """How the release picks a site slot per row: with probability proportional to the
        site's noisy total (``totals``, DP outputs), its outcome condition then drawn from that
        site's own noisy marginals (``marginals``): free post-processing of round 0.

        ``site_column`` names the table's own column saying which hospital a row comes from: a
        released row's value there is drawn from its slot's noisy distribution of that column, so
        the column keeps which site generated the row instead of being generated apart from it.

        ``table_noise_std`` is the noise std of one cell of the summed tables (public: from the
        noise the coordinator asked of each site), which says how far the release may trust them
        (:mod:`fedsyn.model.calibration`); None: not at all."""
        if len(totals) != self.config.site_slots or len(marginals) != self.config.site_slots:
            raise ValueError(f"{len(totals)} totals and {len(marginals)} marginals for "
                             f"{self.config.site_slots} site slots")
        if site_column is not None and site_column not in self.conditions.columns:
            raise ValueError(f"site column '{site_column}' is not a categorical column of the schema")
        if not plausible_counts(np.asarray(totals, dtype=float)):  # NaN slot weights failed in torch's sampler
            raise ValueError("the sites' noisy totals are not finite counts within range")
        # Everything that reads the tables first, then the trainer's state: tables a distribution
        # cannot be read from raise here and leave the trainer as it was.
        calibration = SlotCalibration(self.encoder, marginals, table_noise_std, self.device)
        conditions = [ConditionSampler(self.encoder, self.device, marginals=m) for m in marginals]
        site_values = None if site_column is None else [
            torch.as_tensor(m.probabilities(site_column, floor=0.0), dtype=torch.float32, device=self.device)
            for m in marginals]
        if self.matcher is not None:
            self.matcher.set_slots(marginals)
        weights = torch.as_tensor(np.clip(np.asarray(totals, dtype=float), 1.0, None), dtype=torch.float32)
        self.release_slots = ReleaseSlots(list(totals), list(marginals), site_column, table_noise_std)
        self.slot_weights = (weights / weights.sum()).to(self.device)
        self.slot_conditions = conditions
        self.calibration = calibration
        self.slot_site_values = site_values

    def _impose_site_values(self, rows: torch.Tensor, slots: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        """Each row's site-column one-hot drawn from its slot's noisy distribution of that column."""
        if self.site_column is None or self.slot_site_values is None:
            return rows
        span = next(s for s in self.encoder.spans if s.column == self.site_column)
        rows = rows.clone()
        rows[:, span.start:span.end] = 0.0
        for k, probs in enumerate(self.slot_site_values):
            members = (slots == k).nonzero(as_tuple=True)[0]
            if len(members) and probs.sum() > 0:
                values = torch.multinomial(probs, len(members), replacement=True, generator=rng)
                rows[members, span.start + values] = 1.0
            elif len(members):  # nothing left of this slot's noise: the column's global distribution
                block = self.conditions.columns.index(self.site_column)
                values = torch.multinomial(self.conditions.block_probs[block], len(members), replacement=True,
                                           generator=rng)
                rows[members, span.start + values] = 1.0
        return rows

    def _release_conditions(self, n: int, condition: dict[str, object] | None, rng: torch.Generator
                            ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Conditions and site slots of ``n`` released rows: the slot first (by the sites'
        noisy totals), then the outcome from that slot's noisy marginal (or ``condition``)."""
        column, value = next(iter(condition.items())) if condition else (None, None)
        if self.config.site_slots == 0 or self.slot_weights is None or self.slot_conditions is None:
            slots = None
            if self.config.site_slots:  # no release slots set: uniform slots, global conditions
                slots = torch.multinomial(torch.ones(self.config.site_slots, device=self.device), n,
                                          replacement=True, generator=rng)
            if column is not None:
                return self.conditions.fixed(n, column, value), slots
            # Outcome drawn from its noisy marginal, the rest generated given it.
            return self.conditions.sample(n, rng, column=self.conditions.outcome), slots
        weights = self.slot_weights
        if column is not None:  # P(slot | value) from each slot's noisy share of that value
            cond = self.conditions.fixed(n, column, value)
            block = self.conditions.columns.index(column)
            index = self.conditions.values[block].index(str(value))
            weights = weights * torch.stack([s.block_probs[block][index] for s in self.slot_conditions])
            slots = torch.multinomial(weights, n, replacement=True, generator=rng)
            return cond, slots
        slots = torch.multinomial(weights, n, replacement=True, generator=rng)
        cond = torch.zeros((n, self.conditions.dim), device=self.device)
        for k, sampler in enumerate(self.slot_conditions):
            rows = (slots == k).nonzero(as_tuple=True)[0]
            if len(rows):
                cond[rows] = sampler.sample(len(rows), rng, column=sampler.outcome)
        return cond, slots

    def sample_frame(self, n: int, condition: dict[str, object] | None = None,
                     rules: list[Rule] | None = None, within: list[Condition] | None = None,
                     max_rounds: int = 20, rng: torch.Generator | None = None) -> tuple[pd.DataFrame, int]:
        """``n`` decoded rows; with ``rules``, rows breaking any rule are dropped and replaced
        (counted); with ``within``, only rows meeting every condition are kept (e.g. a numeric
        range asked for: not a violation, so not counted). The schema's missing-by-design rules
        are always imposed (:func:`impose_missing_by_design`).

        Returns the rows and how many were dropped for breaking a rule (reported, never hidden).
        """
        kept: list[pd.DataFrame] = []
        have = dropped = drawn = 0
        for _ in range(max_rounds):
            # Draw for the share of rows kept so far, so a narrow range does not need many rounds.
            share = have / drawn if drawn and have else 1.0
            size = min(max(n - have, math.ceil((n - have) / max(share, 1e-3))), 1_000_000)
            frame = impose_missing_by_design(self.encoder.decode(self.generate(size, condition, rng=rng)),
                                             self.encoder.schema.rules)
            drawn += size
            if rules:
                bad = violation_mask(frame, rules)
                dropped += int(bad.sum())
                frame = frame[~bad]
            for test in within or []:
                frame = frame[test.holds(frame)]
            kept.append(frame)
            have += len(frame)
            if have >= n:
                return pd.concat(kept, ignore_index=True).head(n), dropped
        raise RuntimeError(f"after {max_rounds} attempts only {have} of {n} rows satisfy the schema rules and the "
                           "conditions asked for; widen the range or ask for fewer rows")

    # -- weights as arrays (the federation's wire format) ---------------------------------

    def state_arrays(self) -> OrderedDict[str, np.ndarray]:
        """G and D parameters as named numpy arrays, generator first."""
        arrays: OrderedDict[str, np.ndarray] = OrderedDict()
        for prefix, module in (("generator", self.generator), ("discriminator", self.discriminator)):
            for name, tensor in module.state_dict().items():
                arrays[f"{prefix}.{name}"] = tensor.detach().cpu().numpy()
        return arrays

    def sampler_arrays(self) -> dict[str, np.ndarray]:
        """The sampling copy's weights as numpy arrays of their own (the copy keeps moving)."""
        return {name: tensor.detach().cpu().numpy().copy() for name, tensor in self.sampler.state_dict().items()}

    def load_sampler_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Set the sampling copy's weights (as :meth:`sampler_arrays` gave them)."""
        self.sampler.load_state_dict({name: torch.as_tensor(value) for name, value in arrays.items()})
        self._sampler_mass = 1.0

    def load_state_arrays(self, arrays: dict[str, np.ndarray], sampler_decay: float = 0.0) -> None:
        """Load G and D; the sampling copy becomes G (``sampler_decay=0``) or moves towards it
        as an exponential moving average (the coordinator's average over rounds). Arrays these
        networks do not have are refused (ValueError), not ignored: a site that ignored them let a
        coordinator pad the global model at will (helper-82). Each array must have its tensor's own
        dtype and be finite in it: a float64 1e300 or a complex inf passed a finiteness check in
        its own dtype and became an infinite float32 weight here (helper-90 F3)."""
        stray = [name for name in arrays if not name.startswith(("generator.", "discriminator."))]
        if stray:
            raise ValueError(f"{len(stray)} array(s) belong to neither network")
        for prefix, module in (("generator", self.generator), ("discriminator", self.discriminator)):
            dtypes = {key: torch.empty(0, dtype=tensor.dtype).numpy().dtype
                      for key, tensor in module.state_dict().items()}
            state = {}
            for name, value in arrays.items():
                if not name.startswith(prefix + "."):
                    continue
                key, value = name[len(prefix) + 1:], np.asarray(value)
                if key in dtypes and value.dtype != dtypes[key]:
                    raise ValueError(f"array '{name}' has dtype {value.dtype}, not its network's")
                if np.issubdtype(value.dtype, np.inexact) and not np.isfinite(value).all():
                    raise ValueError(f"array '{name}' holds NaN or infinite values")
                state[key] = torch.as_tensor(value)
            module.load_state_dict(state, strict=True)
        self._update_sampler(sampler_decay)

"""Marginal matching: the generator's rows held to the noisy outcome tables.

The round-0 tables (every column by the outcome's classes, Gaussian noise, charged) are
already paid for, so training the generator towards them is free post-processing, as in
GEM (Liu et al., NeurIPS 2021). The GAN alone can miss or even reverse how a column
depends on the outcome; this term states it directly. For each outcome class among the
generated rows:

- a categorical column's mean softmax (the release's expected frequencies) against the
  table's P(value | class), by Kullback-Leibler divergence;
- a numeric column's encoded values (tanh, the same [-1, 1] space the encoder maps through
  the global CDF) against the quantiles of the table's P(bin | class), by the squared
  one-dimensional Wasserstein distance (sorted values against target quantiles);
- a nullable numeric's present/missing block like a categorical.

Every outcome class weighs the same, however rare: a synthetic table is mostly used to tell
the classes apart, and a rare class is where the GAN alone loses its relations first.

A site's pair tables (:mod:`fedsyn.privacy.pairs`, also paid for in round 0; in a federation
the sites' pooled association fitted to the site's own margins) are matched too: the rows
generated for a site's slot (all rows when there are no slots) against that site's table,
by the Kullback-Leibler divergence of their soft joint distribution over the table's groups
(the mean outer product of each row's group memberships: a categorical's softmax, a numeric's
encoded value between sigmoid steps at the groups' encoded bounds). Rows are
weighted back from equal class parts to each slot's noisy class shares, since a pair table
counts the site's rows as they come. The pairs are what carry every question the outcome
tables do not; per slot they keep each hospital's own mix of values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from fedsyn.model.conditioning import ConditionSampler
from fedsyn.model.encoder import TableEncoder
from fedsyn.privacy.marginals import Marginals, exact_counts, split_column

if TYPE_CHECKING:
    from fedsyn.model.training import GANTrainer

_EPS = 1e-6
_STEP = 0.05  # sharpness of a numeric group's soft bounds, in the encoded [-1, 1] space


@dataclass(frozen=True)
class _Softmax:
    start: int
    end: int
    target: torch.Tensor  # classes × width: P(value | class)


@dataclass(frozen=True)
class _Numeric:
    index: int
    edges: torch.Tensor  # encoded value at each bin edge (increasing)
    cdf: torch.Tensor  # classes × (bins + 1): P(value <= edge | class)


@dataclass(frozen=True)
class _Groups:
    """How to read one column's pair-table groups off the generator's raw outputs."""

    start: int  # a categorical's softmax block, or a numeric's tanh output
    end: int
    inner: torch.Tensor | None  # a numeric's encoded inner group bounds; None: categorical
    missing: int | None  # a nullable numeric's present/missing block


@dataclass(frozen=True)
class _Pair:
    slot: int | None
    first: _Groups
    second: _Groups
    target: torch.Tensor  # groups × groups: the noisy table as a distribution
    class_probs: torch.Tensor  # the slot's noisy class shares (weights rows back from equal parts)


class TableMatcher:
    """The matching loss of generated rows against ``encoder.marginals``' tables."""

    def __init__(self, encoder: TableEncoder, conditions: ConditionSampler, device: torch.device):
        schema = encoder.schema
        split = split_column(schema)
        self.split_block: int | None = None
        if split is not None and split.name in conditions.columns:
            block = conditions.columns.index(split.name)
            self.split_block = block
            start = int(conditions.block_start[block])
            self.split_range = (start, start + len(conditions.values[block]))
        self.softmax: list[_Softmax] = []
        self.numeric: list[_Numeric] = []
        for span in encoder.spans:
            column = schema.column(span.column)
            if split is not None and column.name == split.name:
                continue  # conditioned on, not generated
            conditional = encoder.marginals.conditional(column.name)  # bins × classes
            if column.is_categorical:
                self.softmax.append(_Softmax(span.start, span.end, _tensor(conditional.T, device)))
            elif span.activation == "softmax":  # present / missing of a nullable numeric
                missing = conditional[-1]
                self.softmax.append(_Softmax(span.start, span.end,
                                             _tensor(np.stack([1.0 - missing, missing], axis=1), device)))
            else:
                body = conditional[:-1] if column.nullable else conditional
                body = body / np.clip(body.sum(axis=0, keepdims=True), _EPS, None)
                cdf = np.concatenate([np.zeros((1, body.shape[1])), np.cumsum(body, axis=0)]).T
                cdf[:, -1] = 1.0
                _, global_cdf = encoder.numeric_map(column.name)
                self.numeric.append(_Numeric(span.start, _tensor(2.0 * global_cdf - 1.0, device),
                                             _tensor(np.maximum.accumulate(cdf, axis=1), device)))
        self.terms = len(self.softmax) + len(self.numeric)
        self.encoder, self.device = encoder, device
        self._categorical = [(span.column, span) for span in encoder.spans if schema.column(span.column).is_categorical
                             and (split is None or span.column != split.name)]
        self.pairs: list[_Pair] = self._pair_terms(encoder.marginals, None)
        self.slot_softmax: list[list[_Softmax]] = []

    def set_slots(self, per_slot: list[Marginals]) -> None:
        """Match each slot's rows to its own site's tables too: its pair tables (instead of the
        encoder's), and each categorical column's P(value | class) beside the summed tables'.
        So a hospital's own mix (a treatment one period used more) reaches the generator's output."""
        self.pairs = [term for slot, marginals in enumerate(per_slot) for term in self._pair_terms(marginals, slot)]
        self.slot_softmax = [[_Softmax(span.start, span.end, _tensor(marginals.conditional(name).T, self.device))
                              for name, span in self._categorical] for marginals in per_slot]

    def _pair_terms(self, marginals: Marginals, slot: int | None) -> list[_Pair]:
        totals = marginals.class_totals()
        class_probs = _tensor(totals / totals.sum(), self.device)
        return [_Pair(slot, self._groups(pair[0], marginals), self._groups(pair[1], marginals),
                      _tensor(marginals.pair_distribution(pair), self.device), class_probs)
                for pair in marginals.pairs]

    def _groups(self, name: str, marginals: Marginals) -> _Groups:
        spans = [span for span in self.encoder.spans if span.column == name]
        if self.encoder.schema.column(name).is_categorical:
            return _Groups(spans[0].start, spans[0].end, None, None)
        _, cdf = self.encoder.numeric_map(name)
        bounds = marginals.pair_bounds[name].astype(int)
        missing = spans[1].start if len(spans) > 1 else None
        return _Groups(spans[0].start, spans[0].end, _tensor(2.0 * cdf[bounds[1:-1]] - 1.0, self.device), missing)

    def classes(self, cond: torch.Tensor) -> torch.Tensor:
        """Each generated row's outcome class, read from its condition (all zeros: no split)."""
        if self.split_block is None:
            return torch.zeros(cond.shape[0], dtype=torch.long, device=cond.device)
        start, end = self.split_range
        block = cond[:, start:end]
        if not bool((block.sum(dim=1) > 0).all()):
            raise ValueError("matching needs every generated row conditioned on the outcome")
        return block.argmax(dim=1)

    def loss(self, raw: torch.Tensor, cond: torch.Tensor, slots: torch.Tensor | None = None) -> torch.Tensor:
        """The matching loss of the generator's raw outputs ``raw`` for conditions ``cond``
        (and site ``slots``, which the pair terms of slots need)."""
        return (self._table_loss(raw, cond) + self._slot_table_loss(raw, cond, slots)
                + self._pair_loss(raw, cond, slots))

    def _slot_table_loss(self, raw: torch.Tensor, cond: torch.Tensor, slots: torch.Tensor | None) -> torch.Tensor:
        total, terms = raw.new_zeros(()), 0
        if slots is None or not self.slot_softmax:
            return total
        labels = self.classes(cond)
        for slot, softmax in enumerate(self.slot_softmax):
            for label in torch.unique(labels[slots == slot]).tolist():
                rows = raw[(slots == slot) & (labels == label)]
                if rows.shape[0] < 2:
                    continue
                for term in softmax:
                    total = total + _softmax_divergence(rows, term, label)
                    terms += 1
        return total / max(terms, 1)

    def _pair_loss(self, raw: torch.Tensor, cond: torch.Tensor, slots: torch.Tensor | None) -> torch.Tensor:
        total = raw.new_zeros(())
        if not self.pairs:
            return total
        labels = self.classes(cond)
        terms = 0
        for term in self.pairs:
            rows = torch.ones_like(labels, dtype=torch.bool) if term.slot is None or slots is None \
                else slots == term.slot
            if int(rows.sum()) < 2:
                continue
            members = labels[rows]
            counts = torch.bincount(members, minlength=term.class_probs.shape[0]).to(raw.dtype)
            weights = term.class_probs[members] / counts[members]
            first = _membership(raw[rows], term.first) * weights.unsqueeze(1)
            joint = (first.T @ _membership(raw[rows], term.second) / weights.sum()).clamp_min(_EPS)
            target = term.target.clamp_min(_EPS)
            total = total + (target * (target.log() - joint.log())).sum()
            terms += 1
        return total / max(terms, 1)

    def _table_loss(self, raw: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        total = raw.new_zeros(())
        if self.terms == 0:
            return total
        labels = self.classes(cond)
        present = [label for label in torch.unique(labels).tolist() if int((labels == label).sum()) >= 2]
        for label in present:
            rows = raw[labels == label]
            share = 1.0 / len(present)
            for term in self.softmax:
                total = total + share * _softmax_divergence(rows, term, label)
            levels = (torch.arange(rows.shape[0], device=raw.device, dtype=raw.dtype) + 0.5) / rows.shape[0]
            for numeric in self.numeric:
                values = torch.sort(torch.tanh(rows[:, numeric.index])).values
                quantiles = _interpolate(levels, numeric.cdf[label], numeric.edges)
                total = total + share * ((values - quantiles) ** 2).mean()
        return total / self.terms


def _softmax_divergence(rows: torch.Tensor, term: _Softmax, label: int) -> torch.Tensor:
    """KL(table's P(value | class ``label``) || the rows' mean softmax over the column's block)."""
    produced = torch.softmax(rows[:, term.start:term.end], dim=1).mean(dim=0).clamp_min(_EPS)
    target = term.target[label].clamp_min(_EPS)
    return (target * (target.log() - produced.log())).sum()


def _membership(raw: torch.Tensor, groups: _Groups) -> torch.Tensor:
    """Each row's soft membership of a column's pair-table groups (rows × groups, rows sum to 1)."""
    if groups.inner is None:
        return torch.softmax(raw[:, groups.start:groups.end], dim=1)
    value = torch.tanh(raw[:, groups.start:groups.start + 1])
    above = torch.sigmoid((value - groups.inner.unsqueeze(0)) / _STEP)  # P(above each inner bound)
    steps = torch.cat([torch.ones_like(value), above, torch.zeros_like(value)], dim=1)
    present = steps[:, :-1] - steps[:, 1:]
    if groups.missing is None:
        return present
    presence = torch.softmax(raw[:, groups.missing:groups.missing + 2], dim=1)
    return torch.cat([present * presence[:, :1], presence[:, 1:]], dim=1)


def _tensor(values: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(values, dtype=np.float32), device=device)


def _interpolate(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation (``np.interp``) for increasing ``xp``; flat parts of
    ``xp`` (empty bins) are stepped over."""
    index = torch.searchsorted(xp, x).clamp(1, xp.shape[0] - 1)
    left, right = xp[index - 1], xp[index]
    weight = ((x - left) / (right - left).clamp_min(_EPS)).clamp(0.0, 1.0)
    return fp[index - 1] + weight * (fp[index] - fp[index - 1])


def release_misfit(trainer: GANTrainer, rng: torch.Generator, rows: int = 2000) -> float:
    """How far ``rows`` drawn as the release draws them are from the encoder's noisy tables:
    per outcome class and column, the total variation between the rows' distribution over the
    public bins and the table's P(bin | class), averaged with equal weight per class and per
    column. Reads DP outputs only (the tables and the model), so choosing among models by it
    is post-processing.

    The rows are drawn from ``rng``, not the trainer's own stream (which stays as it was):
    handing every candidate model the same stream compares models, not luck."""
    encoder = trainer.encoder
    produced = exact_counts(encoder.decode(trainer.generate(rows, rng=rng)), encoder.schema)
    split = split_column(encoder.schema)
    distances = []
    for column in encoder.schema.columns:
        if split is not None and column.name == split.name:
            continue
        target, made = encoder.marginals.conditional(column.name), produced.conditional(column.name)
        distances.append(float(np.mean(0.5 * np.abs(target - made).sum(axis=0))))
    return float(np.mean(distances)) if distances else 0.0

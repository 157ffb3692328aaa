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

A slot's numeric columns get its site's departure from the federation when rows are drawn
(:mod:`fedsyn.model.calibration`, from the same quantile targets): the generator's rows barely
depend on their slot, whatever the loss asks of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from fedsyn.data.schema import Column
from fedsyn.model.conditioning import ConditionSampler
from fedsyn.model.encoder import TableEncoder
from fedsyn.model.quantiles import EPS, QuantileTargets, float_tensor, midpoints, numeric_outputs
from fedsyn.privacy.marginals import Marginals, class_distances, exact_counts, split_column

if TYPE_CHECKING:
    from fedsyn.model.training import GANTrainer

_STEP = 0.05  # sharpness of a numeric group's soft bounds, in the encoded [-1, 1] space


class _SoftmaxBlocks:
    """Every softmax block matched against a table of P(value | class), taken together: one
    gather, one softmax per block and one divergence per group and block for the whole batch
    (a 63-column table has 55 blocks, 4 slots and 2 classes: term by term, the loss was 440
    small operations a step and most of a wide run's time)."""

    def __init__(self, spans: list[tuple[int, int]], device: torch.device):
        self.blocks = len(spans)
        pieces = [(torch.arange(start, end, device=device), torch.full((end - start,), block, device=device))
                  for block, (start, end) in enumerate(spans)]
        self.columns = torch.cat([columns for columns, _ in pieces]) if pieces \
            else torch.zeros(0, dtype=torch.long, device=device)
        self.owner = torch.cat([owner for _, owner in pieces]) if pieces else self.columns.clone()

    @staticmethod
    def targets(per_block: list[torch.Tensor]) -> torch.Tensor:
        """Blocks' targets (each classes × width: P(value | class)) side by side, made safe to
        take logs of: classes × the blocks' widths."""
        return torch.cat(per_block, dim=1).clamp_min(EPS) if per_block else torch.zeros((0, 0))

    def softmax(self, raw: torch.Tensor) -> torch.Tensor:
        """Each row's softmax within every block (rows × the blocks' widths)."""
        logits = raw[:, self.columns]
        owner = self.owner.expand_as(logits)
        peak = logits.new_full((raw.shape[0], self.blocks), -torch.inf).scatter_reduce(
            1, owner, logits.detach(), reduce="amax", include_self=True)  # a constant per block: softmax is the same
        exp = torch.exp(logits - peak.gather(1, owner))
        sums = exp.new_zeros((raw.shape[0], self.blocks)).scatter_add(1, owner, exp)
        return exp / sums.gather(1, owner)

    def divergences(self, means: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """KL(target || mean softmax) of every group (rows of ``means``) and block (groups × blocks)."""
        terms = targets * (targets.log() - means.clamp_min(EPS).log())
        return terms.new_zeros((means.shape[0], self.blocks)).index_add(1, self.owner, terms)


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
        spans: list[tuple[int, int]] = []
        targets: list[torch.Tensor] = []  # each classes × width: P(value | class)
        for span in encoder.spans:
            column = schema.column(span.column)
            if split is not None and column.name == split.name:
                continue  # conditioned on, not generated
            conditional = encoder.marginals.conditional(column.name)  # bins × classes
            if column.is_categorical:
                spans.append((span.start, span.end))
                targets.append(float_tensor(conditional.T, device))
            elif span.activation == "softmax":  # present / missing of a nullable numeric
                missing = conditional[-1]
                spans.append((span.start, span.end))
                targets.append(float_tensor(np.stack([1.0 - missing, missing], axis=1), device))
        self.encoder, self.device = encoder, device
        self.softmax = _SoftmaxBlocks(spans, device)
        self.softmax_target = _SoftmaxBlocks.targets(targets)
        outputs = numeric_outputs(encoder)  # matched by their values' quantiles
        self.numeric: list[Column] = [column for column, _ in outputs]
        self.numeric_columns = torch.tensor([start for _, start in outputs], dtype=torch.long, device=device)
        self.quantiles = QuantileTargets.of(encoder, self.numeric, encoder.marginals, device)
        self.terms = self.softmax.blocks + len(self.numeric)
        self._categorical = [(span.column, span) for span in encoder.spans if schema.column(span.column).is_categorical
                             and (split is None or span.column != split.name)]
        self.pairs: list[_Pair] = self._pair_terms(encoder.marginals, None)
        self.slot_softmax: _SoftmaxBlocks | None = None
        self.slot_targets: list[torch.Tensor] = []  # per slot: classes × the categorical blocks' widths

    def set_slots(self, per_slot: list[Marginals]) -> None:
        """Match each slot's rows to its own site's tables too: its pair tables (instead of the
        encoder's), and each categorical column's P(value | class) beside the summed tables'.
        So a hospital's own mix (a treatment one period used more) reaches the generator's output.
        Its numeric columns' quantiles reach the release by :mod:`fedsyn.model.calibration`."""
        pairs = [term for slot, marginals in enumerate(per_slot) for term in self._pair_terms(marginals, slot)]
        targets = [_SoftmaxBlocks.targets([float_tensor(marginals.conditional(name).T, self.device)
                                           for name, _ in self._categorical]) for marginals in per_slot]
        # Set only once every table was read: a table that cannot be read leaves the matcher as it was.
        self.pairs, self.slot_targets = pairs, targets
        self.slot_softmax = _SoftmaxBlocks([(span.start, span.end) for _, span in self._categorical], self.device)

    def _pair_terms(self, marginals: Marginals, slot: int | None) -> list[_Pair]:
        totals = marginals.class_totals()
        class_probs = float_tensor(totals / totals.sum(), self.device)
        return [_Pair(slot, self._groups(pair[0], marginals), self._groups(pair[1], marginals),
                      float_tensor(marginals.pair_distribution(pair), self.device), class_probs)
                for pair in marginals.pairs]

    def _groups(self, name: str, marginals: Marginals) -> _Groups:
        spans = [span for span in self.encoder.spans if span.column == name]
        if self.encoder.schema.column(name).is_categorical:
            return _Groups(spans[0].start, spans[0].end, None, None)
        _, cdf = self.encoder.numeric_map(name)
        bounds = marginals.pair_bounds[name].astype(int)
        missing = spans[1].start if len(spans) > 1 else None
        return _Groups(spans[0].start, spans[0].end, float_tensor(2.0 * cdf[bounds[1:-1]] - 1.0, self.device), missing)

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
        if slots is None or self.slot_softmax is None or self.slot_softmax.blocks == 0:
            return raw.new_zeros(())
        labels = self.classes(cond)
        groups, targets = [], []
        for slot, target in enumerate(self.slot_targets):
            for label in torch.unique(labels[slots == slot]).tolist():
                members = (slots == slot) & (labels == label)
                if int(members.sum()) >= 2:
                    groups.append(members)
                    targets.append(target[label])
        if not groups:
            return raw.new_zeros(())
        means = _group_means(torch.stack(groups), self.slot_softmax.softmax(raw))
        return self.slot_softmax.divergences(means, torch.stack(targets)).mean()

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
            joint = (first.T @ _membership(raw[rows], term.second) / weights.sum()).clamp_min(EPS)
            target = term.target.clamp_min(EPS)
            total = total + (target * (target.log() - joint.log())).sum()
            terms += 1
        return total / max(terms, 1)

    def _table_loss(self, raw: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if self.terms == 0:
            return raw.new_zeros(())
        labels = self.classes(cond)
        present = [label for label in torch.unique(labels).tolist() if int((labels == label).sum()) >= 2]
        if not present:
            return raw.new_zeros(())
        members = torch.stack([labels == label for label in present])
        total = raw.new_zeros(())
        if self.softmax.blocks:
            means = _group_means(members, self.softmax.softmax(raw))
            total = total + self.softmax.divergences(means, self.softmax_target[present]).sum()
        for label, rows in zip(present, members):
            total = total + self._quantile_misfit(raw[rows], self.quantiles, label)
        return total / (len(present) * self.terms)

    def _quantile_misfit(self, raw: torch.Tensor, quantiles: QuantileTargets, label: int) -> torch.Tensor:
        """The squared 1-D Wasserstein distance of the rows' encoded numeric values from the
        targets' quantiles of class ``label``, summed over the numeric columns."""
        if not self.numeric:
            return raw.new_zeros(())
        values = torch.sort(torch.tanh(raw[:, self.numeric_columns]), dim=0).values
        levels = midpoints(values.shape[0], raw)
        return ((values - quantiles.at(label, levels)) ** 2).mean(dim=0).sum()


def _group_means(members: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The mean of ``values``' rows in each group (``members``: groups × rows, boolean)."""
    weights = members.to(values.dtype)
    return (weights @ values) / weights.sum(dim=1, keepdim=True)


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
    distances = class_distances(encoder.marginals, produced, encoder.schema)
    return float(np.mean(list(distances.values()))) if distances else 0.0

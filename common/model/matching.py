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
(:meth:`TableMatcher.calibrated`, from the same quantile targets): the generator's rows barely
depend on their slot, whatever the loss asks of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from fedsyn.data.grid import numeric_bins
from fedsyn.data.schema import Column
from fedsyn.model.conditioning import ConditionSampler
from fedsyn.model.encoder import TableEncoder
from fedsyn.privacy.marginals import Marginals, exact_counts, split_column

if TYPE_CHECKING:
    from fedsyn.model.training import GANTrainer

_EPS = 1e-6
MIN_PRESENT = 20.0  # a slot's class with fewer values of a numeric column by its table: no departure
DEPARTURE_LEVELS = (0.05, 0.95)  # a slot's departure beyond these quantile levels is held at its value there
TRUST_SCALE = 0.1  # the summed table's relative noise at which the release takes its values half from it
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
        return torch.cat(per_block, dim=1).clamp_min(_EPS) if per_block else torch.zeros((0, 0))

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
        terms = targets * (targets.log() - means.clamp_min(_EPS).log())
        return terms.new_zeros((means.shape[0], self.blocks)).index_add(1, self.owner, terms)


@dataclass(frozen=True)
class _Quantiles:
    """The numeric columns' targets, side by side: each column's encoded bin edges and, per
    outcome class, its cumulative distribution at them (P(value <= edge | class)), padded to a
    common width by repeating the last edge (at probability 1), so that one batched search reads
    every column's quantiles at once."""

    edges: torch.Tensor  # columns × width: encoded value at each bin edge (increasing)
    cdf: torch.Tensor  # classes × columns × width

    @classmethod
    def of(cls, edges: list[np.ndarray], cdfs: list[np.ndarray], device: torch.device) -> _Quantiles:
        """From each column's edges and its classes × edges cumulative distribution."""
        width = max((len(e) for e in edges), default=0)
        padded_edges = [np.pad(e, (0, width - len(e)), mode="edge") for e in edges]
        padded_cdfs = [np.pad(c, ((0, 0), (0, width - c.shape[1])), mode="edge") for c in cdfs]
        return cls(_tensor(np.stack(padded_edges) if edges else np.zeros((0, 0)), device),
                   _tensor(np.stack(padded_cdfs, axis=1) if cdfs else np.zeros((0, 0, 0)), device))

    def at(self, label: int, levels: torch.Tensor, column: int | None = None) -> torch.Tensor:
        """Every column's quantiles of class ``label`` at probabilities ``levels`` (levels × columns;
        one ``column``'s only: levels × 1): piecewise-linear between the edges, stepping over empty
        bins (flat parts of the cdf)."""
        chosen = slice(None) if column is None else slice(column, column + 1)
        cdf, edges = self.cdf[label, chosen], self.edges[chosen]
        x = levels.unsqueeze(0).expand(cdf.shape[0], -1).contiguous()
        index = torch.searchsorted(cdf, x).clamp(1, cdf.shape[1] - 1)
        left, right = cdf.gather(1, index - 1), cdf.gather(1, index)
        weight = ((x - left) / (right - left).clamp_min(_EPS)).clamp(0.0, 1.0)
        low, high = edges.gather(1, index - 1), edges.gather(1, index)
        return (low + weight * (high - low)).T


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
        numeric: list[Column] = []  # numeric columns, matched by their values' quantiles
        starts: list[int] = []  # their tanh outputs
        for span in encoder.spans:
            column = schema.column(span.column)
            if split is not None and column.name == split.name:
                continue  # conditioned on, not generated
            conditional = encoder.marginals.conditional(column.name)  # bins × classes
            if column.is_categorical:
                spans.append((span.start, span.end))
                targets.append(_tensor(conditional.T, device))
            elif span.activation == "softmax":  # present / missing of a nullable numeric
                missing = conditional[-1]
                spans.append((span.start, span.end))
                targets.append(_tensor(np.stack([1.0 - missing, missing], axis=1), device))
            else:
                numeric.append(column)
                starts.append(span.start)
        self.encoder, self.device = encoder, device
        self.softmax = _SoftmaxBlocks(spans, device)
        self.softmax_target = _SoftmaxBlocks.targets(targets)
        self.numeric = numeric
        self.numeric_columns = torch.tensor(starts, dtype=torch.long, device=device)
        self.quantiles = self._quantiles(encoder.marginals)
        self.terms = self.softmax.blocks + len(numeric)
        self._categorical = [(span.column, span) for span in encoder.spans if schema.column(span.column).is_categorical
                             and (split is None or span.column != split.name)]
        self.pairs: list[_Pair] = self._pair_terms(encoder.marginals, None)
        self.slot_softmax: _SoftmaxBlocks | None = None
        self.slot_targets: list[torch.Tensor] = []  # per slot: classes × the categorical blocks' widths
        self.slot_quantiles: list[_Quantiles] = []
        self.slot_present: list[torch.Tensor] = []  # per slot: classes × numeric columns, present values
        self.trust = torch.zeros((0, 0), device=device)  # classes × numeric columns: see _trust

    def set_slots(self, per_slot: list[Marginals], table_noise_std: float | None = None) -> None:
        """Match each slot's rows to its own site's tables too: its pair tables (instead of the
        encoder's), and each categorical column's P(value | class) beside the summed tables'.
        So a hospital's own mix (a treatment one period used more) reaches the generator's output.
        Its numeric columns' quantiles reach the release by :meth:`calibrated`, which trusts the
        summed tables as far as their cell noise ``table_noise_std`` allows (None: not at all)."""
        self.pairs = [term for slot, marginals in enumerate(per_slot) for term in self._pair_terms(marginals, slot)]
        self.slot_softmax = _SoftmaxBlocks([(span.start, span.end) for _, span in self._categorical], self.device)
        self.slot_targets = [_SoftmaxBlocks.targets([_tensor(marginals.conditional(name).T, self.device)
                                                     for name, _ in self._categorical]) for marginals in per_slot]
        self.slot_quantiles = [self._quantiles(marginals) for marginals in per_slot]
        self.slot_present = [self._present_counts(marginals) for marginals in per_slot]
        self.trust = self._trust(table_noise_std)

    def _trust(self, table_noise_std: float | None) -> torch.Tensor:
        """How far the release takes each class's numeric values from the summed table rather
        than from the generator (classes × numeric columns, 0 to 1): ``1 / (1 + (r / TRUST_SCALE)²)``
        with ``r`` the noise of the table's cumulative distribution relative to the class's
        values, ``std * sqrt(bins) / present values``. A class of 2,600 values at std 18 takes
        its ages 77 % from the table, one of 370 values 6 %."""
        present = self._present_counts(self.encoder.marginals)
        if table_noise_std is None:
            return torch.zeros_like(present)
        bins = _tensor(np.array([numeric_bins(column) for column in self.numeric], dtype=float), self.device)
        relative = table_noise_std * torch.sqrt(bins) / present.clamp_min(1.0)
        return 1.0 / (1.0 + (relative / TRUST_SCALE) ** 2)

    def _present_counts(self, marginals: Marginals) -> torch.Tensor:
        """How many values of each numeric column each outcome class holds by ``marginals``'
        tables (classes × numeric columns): the class's noisy total, less its noisy missing."""
        totals = marginals.class_totals()
        present = [totals * (1.0 - marginals.conditional(column.name)[-1]) if column.nullable else totals
                   for column in self.numeric]
        return _tensor(np.stack(present, axis=1) if present else np.zeros((len(totals), 0)), self.device)

    def _quantiles(self, marginals: Marginals) -> _Quantiles:
        """The numeric columns' quantile targets from ``marginals``' tables (a nullable column's
        present values only: its present/missing block is matched like a categorical)."""
        edges, cdfs = [], []
        for column in self.numeric:
            conditional = marginals.conditional(column.name)  # bins × classes
            body = conditional[:-1] if column.nullable else conditional
            body = body / np.clip(body.sum(axis=0, keepdims=True), _EPS, None)
            cdf = np.concatenate([np.zeros((1, body.shape[1])), np.cumsum(body, axis=0)]).T
            cdf[:, -1] = 1.0
            _, global_cdf = self.encoder.numeric_map(column.name)
            edges.append(2.0 * global_cdf - 1.0)
            cdfs.append(np.maximum.accumulate(cdf, axis=1))
        return _Quantiles.of(edges, cdfs, self.device)

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
            joint = (first.T @ _membership(raw[rows], term.second) / weights.sum()).clamp_min(_EPS)
            target = term.target.clamp_min(_EPS)
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

    @torch.no_grad()
    def calibrated(self, rows: torch.Tensor, slots: torch.Tensor | None) -> torch.Tensor:
        """Drawn rows (``rows``: activated, numerics in the encoded [-1, 1] space) with each
        numeric column's present values given each slot's own departure from the federation
        (quantile delta mapping): within each outcome class, a value at rank ``u`` among its
        slot's rows becomes the class's value at ``u`` among all the drawn rows (drawn toward the
        summed table's quantile at ``u`` as far as :meth:`_trust` allows), plus how far the
        slot's table quantile at ``u`` lies from the summed table's. Post-processing of DP outputs
        (the tables and the model). Without slots the rows are returned as they are.

        Why: matching moves the generator towards each slot's tables, but its rows barely depend
        on their slot, and raking only reweights what was drawn. A newcomer's five hospitals
        (real mean ages 52-79; slot tables 54-62) were all released at 60-63. Mapping each slot's
        values onto its table outright gave it its ages, and also every artefact of a weak
        class's noisy table (dead patients' lactate at 13 against 4.8 real): a slot's table is
        the summed one tilted by the site's departure (:func:`~fedsyn.privacy.marginals.shrunk_site_tables`),
        so the difference of their quantiles carries that departure and none of the shared
        noise, and the generator keeps the shape. Where the summed table is precise (a large
        class) the generator's shape is the worse estimate: its survivors' ages averaged 63.4
        with the spread shrunk 1.8x where the table said 59.1 (real 59.8); taken from the table
        as far as its noise allows, 60.6. Ranks within a slot's class are kept, and with them
        every relation the generator made."""
        if slots is None or not self.slot_quantiles or not self.numeric:
            return rows
        labels = self._drawn_classes(rows)
        present = self._present(rows)
        rows = rows.clone()
        for label in torch.unique(labels).tolist():
            for position, start in enumerate(self.numeric_columns.tolist()):
                in_class = (labels == label) & present[:, position]
                pooled = torch.sort(rows[in_class, start]).values
                trust = self.trust[label, position]
                for slot in torch.unique(slots[in_class]).tolist():
                    members = (in_class & (slots == slot)).nonzero(as_tuple=True)[0]
                    levels = _midpoints(len(members), rows)
                    shape = (1.0 - trust) * _empirical_quantiles(pooled, levels) \
                        + trust * self.quantiles.at(label, levels, position)[:, 0]
                    order = torch.argsort(rows[members, start])
                    rows[members[order], start] = (shape + self._departure(slot, label, position, levels)).clamp(-1, 1)
        return rows

    def _departure(self, slot: int, label: int, position: int, levels: torch.Tensor) -> torch.Tensor:
        """How far the slot's table quantiles of a numeric column lie from the summed table's, at
        ``levels``: none where the slot's table holds fewer than :data:`MIN_PRESENT` values of the
        class (a site that never records a lab test: its noisy counts read as a distribution piled
        at the top bound lifted a slot's creatinine from 1.1 to 9.8), and held at its value at
        the :data:`DEPARTURE_LEVELS` beyond them (a table's tails are where its noise lies)."""
        if float(self.slot_present[slot][label, position]) < MIN_PRESENT:
            return levels.new_zeros(levels.shape)
        inner = levels.clamp(*DEPARTURE_LEVELS)
        return (self.slot_quantiles[slot].at(label, inner, position) - self.quantiles.at(label, inner, position))[:, 0]

    def _drawn_classes(self, rows: torch.Tensor) -> torch.Tensor:
        """Each drawn row's outcome class, read from the row itself (a release conditioned on
        another column draws the outcome too)."""
        split = split_column(self.encoder.schema)
        if split is None:
            return torch.zeros(rows.shape[0], dtype=torch.long, device=rows.device)
        span = next(span for span in self.encoder.spans if span.column == split.name)
        return rows[:, span.start:span.end].argmax(dim=1)

    def _present(self, rows: torch.Tensor) -> torch.Tensor:
        """Which of ``rows`` hold a value of each numeric column (rows × numeric columns): all,
        except where a nullable column's present/missing block says missing."""
        present = torch.ones((rows.shape[0], len(self.numeric)), dtype=torch.bool, device=rows.device)
        for position, column in enumerate(self.numeric):
            if column.nullable:
                start = next(span.start for span in self.encoder.spans
                             if span.column == column.name and span.activation == "softmax")
                present[:, position] = rows[:, start] >= rows[:, start + 1]
        return present

    def _quantile_misfit(self, raw: torch.Tensor, quantiles: _Quantiles, label: int) -> torch.Tensor:
        """The squared 1-D Wasserstein distance of the rows' encoded numeric values from the
        targets' quantiles of class ``label``, summed over the numeric columns."""
        if not self.numeric:
            return raw.new_zeros(())
        values = torch.sort(torch.tanh(raw[:, self.numeric_columns]), dim=0).values
        levels = _midpoints(values.shape[0], raw)
        return ((values - quantiles.at(label, levels)) ** 2).mean(dim=0).sum()


def _midpoints(count: int, like: torch.Tensor) -> torch.Tensor:
    """The probability levels ``(i + 0.5) / count`` of ``count`` sorted values (as ``like``'s dtype and device)."""
    return (torch.arange(count, device=like.device, dtype=like.dtype) + 0.5) / count


def _empirical_quantiles(ordered: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """The quantiles at ``levels`` of the sample ``ordered`` (sorted), between its order statistics."""
    position = (levels * ordered.shape[0] - 0.5).clamp(0.0, ordered.shape[0] - 1.0)
    low = position.floor().long()
    high = (low + 1).clamp_max(ordered.shape[0] - 1)
    weight = position - low.to(position.dtype)
    return ordered[low] + weight * (ordered[high] - ordered[low])


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


def _tensor(values: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(values, dtype=np.float32), device=device)


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

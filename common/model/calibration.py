"""Site departures at release: each site slot's numeric values moved by how far its site's noisy
tables lie from the federation's (quantile delta mapping), and each class's shape taken from the
summed tables as far as their noise allows.

Why a step of its own, after the generator: matching (:mod:`fedsyn.model.matching`) moves the
generator towards each slot's tables, but its rows barely depend on their slot, and raking
(:mod:`fedsyn.model.raking`) only reweights what was drawn. A newcomer's five hospitals (real
mean ages 52-79; slot tables 54-62) were all released at 60-63.

Mapping each slot's values onto its own table outright gave it its ages, and also every
artefact of a weak class's noisy table (dead patients' lactate at 13 against 4.8 real). A
slot's table is the summed one tilted by the site's departure
(:func:`~fedsyn.privacy.marginals.shrunk_site_tables`), so the difference of their quantile
functions carries that departure and none of the shared noise, and the generator keeps the
shape. Where the summed table is precise (a large class) the generator's shape is the worse
estimate: its survivors' ages averaged 63.4 with the spread shrunk 1.8x where the table said
59.1 (real 59.8); taken from the table as far as its noise allows, 60.6.

Post-processing of DP outputs only (the tables, the model and a public noise std).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fedsyn.data.grid import bound_value_bins, numeric_bins, numeric_edges
from fedsyn.data.schema import Column
from fedsyn.model.encoder import TableEncoder
from fedsyn.model.quantiles import QuantileTargets, float_tensor, midpoints, numeric_outputs
from fedsyn.privacy.marginals import Marginals, split_column
from fedsyn.privacy.postprocessing import NOISE_FLOOR, PILE_FLOORS

MIN_PRESENT = 20.0  # a slot's class with fewer values of a numeric column by its table: no departure
DEPARTURE_LEVELS = (0.05, 0.95)  # a slot's departure beyond these quantile levels is held at its value there
TRUST_SCALE = 0.1  # the summed table's relative noise at which the release takes its values half from it
ATOM_BAND = 2.0  # a class's drawn share at a bound's atom is kept this many noise std of the table's
# An integer bound's cell is one count only where the tables kept it a group of its own, a pile
# (fedsyn.privacy.postprocessing.coarsened, at the default floor); below, it may be spread with its
# neighbours, and a band of one cell's noise around that held 300 values with 20 % at the bound to 10 %.
PILE_STD = PILE_FLOORS * NOISE_FLOOR


class SlotCalibration:
    """The release's calibration for one set of site slots: the encoder's (summed) tables,
    each slot's own ``per_slot`` tables, and the summed tables' cell noise std
    ``table_noise_std`` (public; None: the summed tables are not trusted over the generator)."""

    def __init__(self, encoder: TableEncoder, per_slot: list[Marginals], table_noise_std: float | None,
                 device: torch.device):
        self.encoder = encoder
        outputs = numeric_outputs(encoder)
        self.numeric: list[Column] = [column for column, _ in outputs]
        self.starts = [start for _, start in outputs]
        check_noise_std(table_noise_std)
        self.pooled = QuantileTargets.of(encoder, self.numeric, encoder.marginals, device)
        self.slot_quantiles = [QuantileTargets.of(encoder, self.numeric, marginals, device) for marginals in per_slot]
        present = self._present_counts(encoder.marginals, device)
        self.slot_present = [self._present_counts(marginals, device) for marginals in per_slot]
        self.trust = self._trust(table_noise_std, present)
        self.continuous = [_continuous_range(column) for column in self.numeric]
        self.atom_values = [_atom_values(column) for column in self.numeric]
        # each class's share at the atoms by the summed tables, then by each slot's, and the
        # noise std of such a share (one cell's: the summed std is at least any site's own)
        held = [counts.cpu().numpy() for counts in (present, *self.slot_present)]
        self.atom_shares = [self._atom_shares(table_noise_std, counts, tables)
                            for counts, tables in zip(held, [encoder.marginals, *per_slot])]
        self.atom_noise = [(table_noise_std or 0.0) / np.clip(counts, 1.0, None) for counts in held]

    def _trust(self, table_noise_std: float | None, present: torch.Tensor) -> torch.Tensor:
        """How far the release takes each class's numeric values from the summed table rather
        than from the generator (classes × numeric columns, 0 to 1): ``1 / (1 + (r / TRUST_SCALE)²)``
        with ``r`` the noise of the table's cumulative distribution relative to the class's
        values, ``std * sqrt(bins) / present values``. A class of 2,600 values at std 18 takes
        its ages 77 % from the table, one of 370 values 6 %. None below :data:`MIN_PRESENT`
        values, whatever the std: a class the table holds no values of has no shape to give
        (``present``: the summed tables' values, classes × numeric columns)."""
        if table_noise_std is None:
            return torch.zeros_like(present)
        bins = float_tensor(np.array([numeric_bins(column) for column in self.numeric], dtype=float), present.device)
        relative = table_noise_std * torch.sqrt(bins) / present.clamp_min(1.0)
        return torch.where(present < MIN_PRESENT, 0.0, 1.0 / (1.0 + (relative / TRUST_SCALE) ** 2))

    def _atom_shares(self, table_noise_std: float | None, present: np.ndarray, tables: Marginals) -> np.ndarray:
        """Each class's share of present values at each numeric column's bounds by ``tables``
        (classes × numeric columns × 2: lower, upper), where a bound's value has a bin of its own
        (:func:`~fedsyn.data.grid.bound_value_bins`): a continuous column's atoms, each settled
        against the noise as one cell (:func:`~fedsyn.privacy.postprocessing.point_mass_beyond_noise`),
        and an integer column's bound where its coarsened table kept it a pile of its own
        (:data:`PILE_STD`). NaN where the release keeps the generator's share: a bound without
        such a bin or an integer bound below a pile, a class the
        tables hold fewer than :data:`MIN_PRESENT` values of (``present``, classes × numeric
        columns), or tables not trusted over the generator (no noise std).

        One cell's noise is that of a single count, not of a whole quantile function (the
        :meth:`_trust` of a class's shape): a class of 600 values is known there to within a
        few percent, where the generator, which draws a pile like any other value, gave a COVID
        table's positive tests the cycle threshold's limit 45 in 28-81 % of rows (0.5 % real,
        every negative test at it; docs/benchmarks.md)."""
        shares = np.full((present.shape[0], len(self.numeric), 2), np.nan)
        if table_noise_std is None:
            return shares
        for position, column in enumerate(self.numeric):
            alone = np.array(bound_value_bins(column))
            if not alone.any():
                continue
            conditional = tables.conditional(column.name)
            body = conditional[:-1] if column.nullable else conditional
            counts = body[[0, -1]].T * np.clip(tables.class_totals(), 0.0, None)[:, None]
            body = body / np.clip(body.sum(axis=0, keepdims=True), 1e-12, None)
            at_bounds = np.where(alone, body[[0, -1]].T, np.nan)
            if not column.has_bound_atoms:  # an integer bound: kept where the tables kept it alone
                at_bounds = np.where(counts >= PILE_STD * table_noise_std, at_bounds, np.nan)
            held = present[:, position] >= MIN_PRESENT
            shares[held, position] = at_bounds[held]
        return shares

    def _atoms_as_tabled(self, values: np.ndarray, label: int, position: int, slot: int,
                         carry: np.ndarray) -> np.ndarray:
        """A slot's class's sorted ``values`` (on the grid's scale) with its share at each bound's
        atom kept within :data:`ATOM_BAND` noise std of the slot's table share (:meth:`_atom_shares`;
        the summed tables' where the slot holds too few values, as drawn where neither says), the
        values between keeping their shape (re-spread over the rows left; the table's own where
        none was drawn). Each slot's share is the raking's target too
        (:func:`fedsyn.model.raking.point_mass_bounds`): set to the summed share instead, a site
        with 30 % at the limit beside one with 0.5 % kept 15 %. ``carry`` (lower, upper) holds
        the rounding left over from the class's earlier slots, so that a class's few rows at an
        atom are not rounded away slot by slot (updated in place)."""
        movable, atoms = self.continuous[position]
        own, summed = self.atom_shares[1 + slot][label, position], self.atom_shares[0][label, position]
        target = np.where(np.isnan(own), summed, own)
        if atoms is None or np.isnan(target).all() or len(values) == 0:
            return values
        noise = np.where(np.isnan(own), self.atom_noise[0][label, position], self.atom_noise[1 + slot][label, position])
        count = len(values)
        drawn = np.array([np.sum(values <= atoms[0]), np.sum(values >= atoms[1])], dtype=float)
        band = ATOM_BAND * noise
        shares = np.where(np.isnan(target), drawn / count, np.clip(drawn / count, target - band, target + band))
        wanted = shares * count + carry
        at_lower, at_upper = (int(k) for k in np.round(wanted))
        at_lower = min(max(at_lower, 0), count)  # a carry of half a row must not round past the rows
        at_upper = min(max(at_upper, 0), count - at_lower)
        carry[:] = wanted - np.array([at_lower, at_upper])
        if at_lower == drawn[0] and at_upper == drawn[1]:
            return values
        between = count - at_lower - at_upper
        inside = values[(values > atoms[0]) & (values < atoms[1])]
        levels = (np.arange(between) + 0.5) / max(between, 1)
        if len(inside):  # the drawn values' own quantiles: themselves where as many are kept
            middle = np.interp(levels * len(inside) - 0.5, np.arange(len(inside)), inside)
        else:
            low, high = float(shares[0]), 1.0 - float(shares[1])
            middle = self.pooled.grid_at(label, torch.as_tensor(low + levels * max(high - low, 0.0)), position)
            middle = np.clip(middle, *movable)
        lower, upper = self.atom_values[position]
        return np.concatenate([np.full(at_lower, lower), middle, np.full(at_upper, upper)])

    def _present_counts(self, marginals: Marginals, device: torch.device) -> torch.Tensor:
        """How many values of each numeric column each outcome class holds by ``marginals``'
        tables (classes × numeric columns): the class's noisy total, less its noisy missing."""
        totals = marginals.class_totals()
        present = [totals * (1.0 - marginals.conditional(column.name)[-1]) if column.nullable else totals
                   for column in self.numeric]
        return float_tensor(np.stack(present, axis=1) if present else np.zeros((len(totals), 0)), device)

    @torch.no_grad()
    def __call__(self, rows: torch.Tensor, slots: torch.Tensor, trusted: bool = True) -> torch.Tensor:
        """Drawn rows (``rows``: activated, numerics in the encoded [-1, 1] space) with each
        numeric column's present values given each slot's own departure: within each outcome
        class, a value at rank ``u`` among its slot's rows becomes the class's value at ``u``
        among all the drawn rows (drawn toward the summed table's quantile at ``u`` as far as
        :meth:`_trust` allows, when ``trusted``), plus how far the slot's table quantile at ``u``
        lies from the summed table's. Ranks within a slot's class are kept, and with them every
        relation the generator made (the moved values are put back in order where a departure
        falling with rank would cross them).

        Rows drawn on a condition other than the outcome are not ``trusted``: the summed table
        describes the whole class, not the rows with that value (drawn toward it, a light-chain
        group's kappa fell from 2.8 to 1.4, the whole class's)."""
        if not self.numeric:
            return rows
        labels = self._drawn_classes(rows)
        present = self._present(rows)
        rows = rows.clone()
        for label in torch.unique(labels).tolist():
            for position, start in enumerate(self.starts):
                in_class = (labels == label) & present[:, position]
                pooled = torch.sort(rows[in_class, start]).values
                trust = self.trust[label, position] if trusted else 0.0
                carry = np.zeros(2)
                for slot in torch.unique(slots[in_class]).tolist():
                    members = (in_class & (slots == slot)).nonzero(as_tuple=True)[0]
                    levels = midpoints(len(members), rows)
                    shape = (1.0 - trust) * _empirical_quantiles(pooled, levels) \
                        + trust * self.pooled.column_at(label, levels, position)
                    name = self.numeric[position].name
                    values = self.encoder.grid_values(name, shape.cpu().double().numpy())
                    if trusted:
                        values = self._atoms_as_tabled(values, label, position, slot, carry)
                    moved = self._moved(position, values, self._departure(slot, label, position, levels))
                    order = torch.argsort(rows[members, start])
                    rows[members[order], start] = torch.as_tensor(self.encoder.positions(name, moved),
                                                                  dtype=rows.dtype, device=rows.device)
        return rows

    def _moved(self, position: int, shape: np.ndarray, departure: np.ndarray) -> np.ndarray:
        """``shape`` (sorted, on the grid's scale) moved by ``departure``, a bound's atom kept: a
        value in a bound's own bin stays at the bound (the atom keeps its share of the class's
        drawn rows; in float32 its bin, a billionth of the range, had no width and every value
        at an assay's limit came out just below it), the others move, in order, and stay clear
        of the atoms, what a departure moved past them scaled into the room left
        (:func:`_within_bounds`)."""
        (lower, upper), atoms = self.continuous[position]
        inside = (shape > atoms[0]) & (shape < atoms[1]) if atoms is not None else np.ones(len(shape), dtype=bool)
        if not inside.any():
            return shape
        moved = shape.copy()
        values = shape[inside]
        moved[inside] = _within_bounds(np.sort(values + departure[inside]), (lower, upper),
                                       (float(values.min()), float(values.max())))
        return moved

    def _departure(self, slot: int, label: int, position: int, levels: torch.Tensor) -> np.ndarray:
        """How far the slot's table quantiles of a numeric column lie from the summed table's, at
        ``levels``, on the public grid's scale: years of age, or a factor of a lab value on a log
        grid. (In the encoded space the global distribution's tails are squeezed into a sliver,
        and a tail's small shift there moved creatinine from 5-9 to the bound 15.)

        None where the slot's table holds fewer than :data:`MIN_PRESENT` values of the class (a
        site that never records a lab test: its noisy counts read as a distribution piled at the
        top bound lifted a slot's creatinine from 1.1 to 9.8), and held at its value at the
        :data:`DEPARTURE_LEVELS` beyond them (a table's tails are where its noise lies)."""
        if float(self.slot_present[slot][label, position]) < MIN_PRESENT:
            return np.zeros(len(levels))
        inner = levels.clamp(*DEPARTURE_LEVELS)
        return np.asarray(self.slot_quantiles[slot].grid_at(label, inner, position)
                          - self.pooled.grid_at(label, inner, position), dtype=float)

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


def check_noise_std(value: object) -> None:
    """``value`` is a summed table's cell noise std: None (unknown) or a finite non-negative
    number. Raises ValueError (a NaN would make every calibrated value NaN)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"table noise std {value!r} is not a non-negative number")


def _continuous_range(column: Column) -> tuple[tuple[float, float], tuple[float, float] | None]:
    """Where a numeric column's values may move on its grid's scale, and the inner edges of the
    bins that hold a bound's value alone (:func:`~fedsyn.data.grid.bound_value_bins`; an
    infinite edge where a bound has none): clear of those bins by a margin (a value moved into
    one would become the bound), or between the bounds for a column without such bins. The
    margin is a millionth of a continuous column's range, which a release's float32 position
    keeps unless the neighbouring bin is nearly empty (a review: then the value came back at the
    bound), and a quarter of an integer column's neighbouring bin, whose values decode whole."""
    edges = numeric_edges(column)
    lower_alone, upper_alone = bound_value_bins(column)
    if not (lower_alone or upper_alone):
        return (float(edges[0]), float(edges[-1])), None
    margin = 1e-6 * float(edges[-1] - edges[0]) if column.has_bound_atoms else 0.25 * float(
        min(edges[2] - edges[1], edges[-2] - edges[-3]) if len(edges) > 3 else edges[1] - edges[0])
    inner = (float(edges[1]) if lower_alone else -math.inf, float(edges[-2]) if upper_alone else math.inf)
    movable = (inner[0] + margin if lower_alone else float(edges[0]),
               inner[1] - margin if upper_alone else float(edges[-1]))
    return movable, inner


def _atom_values(column: Column) -> tuple[float, float]:
    """The middles of a numeric column's two bound bins on its grid's scale: where a value in a
    bin holding its bound alone (:func:`~fedsyn.data.grid.bound_value_bins`) decodes to the bound
    itself."""
    edges = numeric_edges(column)
    return float(edges[0] + edges[1]) / 2.0, float(edges[-2] + edges[-1]) / 2.0


def _within_bounds(values: np.ndarray, bounds: tuple[float, float], drawn: tuple[float, float]) -> np.ndarray:
    """Sorted ``values`` within ``bounds``, order kept: what a departure moved past a bound is
    scaled into the room between the ``drawn`` range's end (the values drawn or trusted) and
    that bound. Clamped instead, it piled at the bound, a public value the real rows may never
    hold (dead patients' creatinine at 15.0)."""
    (lower, upper), (lowest, highest) = bounds, drawn
    top, bottom = float(values[-1]), float(values[0])
    if top > upper and highest < upper:
        values = np.where(values > highest, highest + (values - highest) * (upper - highest) / (top - highest), values)
    if bottom < lower and lowest > lower:
        values = np.where(values < lowest, lowest + (values - lowest) * (lower - lowest) / (bottom - lowest), values)
    return np.asarray(np.clip(values, lower, upper), dtype=float)


def _empirical_quantiles(ordered: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """The quantiles at ``levels`` of the sample ``ordered`` (sorted), between its order statistics.
    Positions are counted in float64: in half precision a position past 2,048 rounds up beyond
    the last order statistic."""
    last = ordered.shape[0] - 1
    position = (levels.double() * ordered.shape[0] - 0.5).clamp(0.0, float(last))
    low = position.floor().long().clamp_max(last)
    high = (low + 1).clamp_max(last)
    weight = (position - low.double()).to(ordered.dtype)
    return ordered[low] + weight * (ordered[high] - ordered[low])

"""Pair tables: the two-way relations the sites measure beside their outcome tables, chosen with DP.

The outcome tables answer questions about the declared outcome. Every other question (sex
from height and weight, a stage from a lab value) rests on how two other columns move
together, which the outcome tables never see. So round 0 also measures a few two-way tables
of other columns, the ones that carry most of what the outcome tables miss, chosen privately
as AIM (McKenna et al., 2022) chooses its marginals (each site's votes kept to a spanning
forest as MST's tree), and chosen by the sites together as FLAIM (Maddock et al., KDD 2024)
federates AIM's choice:

1. **Votes.** Every candidate pair is scored against what the site's noisy outcome tables
   already say of it (:class:`OutcomeModel`: each outcome class's rows with the two columns
   independent; a numeric column cut into at most ``PAIR_GROUPS`` groups of its public bins
   at the quantiles of the site's noisy one-way counts). The score (:func:`misfit_score`) is
   the L1 distance of the exact table from that prediction, less its larger margin's distance
   (a one-way error the other tables pin down) and the error the table's noise would add (in a
   federation, the site's share of the summed table's: ``1 / sqrt(sites)`` of its own table's):
   a pair the outcome already explains scores low, one it misses (a stage and a lab value,
   insurance and medicaid) high. The prediction is post-processing of outputs already drawn,
   so one record moves a score by at most 2 (:data:`SCORE_SENSITIVITY`). The exponential
   mechanism (Gumbel-max) picks pairs one at a time among those joining two trees of the
   forest picked so far (Kruskal): the site's ``k`` votes (:func:`vote_pairs`), ``k`` as many as
   a federation of sites of its noisy size could measure (:func:`vote_count`).
2. **Choice** (the coordinator, post-processing of the votes): the pairs most sites voted for
   (:func:`shared_pairs`), as many as the sum of the sites' tables affords
   (:func:`affordable_pairs`: a table the summed noise would drown is not worth measuring),
   numeric columns grouped at the quantiles of the sites' summed noisy tables.
3. **Measurement.** Every site measures the same tables with Gaussian noise of std
   ``pair_tables * sqrt(k)`` (:func:`measure_pair_tables`): every record adds one count to
   each, so the ``k`` tables cost what one release of them all at L2 sensitivity sqrt(k) costs.
   The coordinator pools them (:func:`fedsyn.model.raking.pooled_pair_tables`): one site's
   table carries its own noise on its few hundred rows, the sum the federation's.

A site alone (``fedsyn fit``) votes and measures its own picks in one go (:func:`measure_pairs`).

**What it costs.** The outcome tables (noise multiplier ``z / sqrt(1 - s)``), the ``k`` picks
(each ``(2 / z) sqrt(s * SELECTION_PART / k)``-DP) and the pair tables (``z / sqrt(s * (1 -
SELECTION_PART))``) add up, in Renyi DP, to exactly the curve of one Gaussian mechanism with
multiplier ``z``: a Gaussian's RDP is ``alpha / (2 z^2)``, and an eps-DP exponential mechanism
is ``eps^2 / 8``-zCDP (bounded range; Cesar and Rogers, 2021), RDP ``alpha eps^2 / 8``; the
choices may depend on earlier outputs (adaptive composition). ``k`` and each pick's epsilon
follow from the noisy outcome tables, and the parts add up to the same total whatever ``k``
is. A site alone charges that one event; a federation's site charges its two releases as two
Gaussian events, the first (tables and votes) at :attr:`RoundZeroSplit.first_release`, the
second (pair tables) at :attr:`RoundZeroSplit.pair_tables`, which compose to the same curve.
The votes' bound is an RDP bound: a ledger on the PRV accountant (which reads a Gaussian's
exact privacy curve) sends no votes (:func:`fedsyn.privacy.budget.pairs_allowed`); pair tables
asked of it anyway are a plain Gaussian event.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from fedsyn.data.grid import bin_index, bin_labels, numeric_bins
from fedsyn.data.schema import Column, Schema
from fedsyn.privacy.randomness import gaussian_counts

if TYPE_CHECKING:
    from fedsyn.privacy.marginals import Marginals

PAIR_PREFIX = "pair:"
BOUNDS_PREFIX = "pairbins:"
VOTE_PREFIX = "vote:"
PAIR_GROUPS = 5
SELECTION_PART = 0.5  # of the pairs' share of round 0: the rest measures the chosen tables
SCORE_SENSITIVITY = 2.0  # see misfit_score
# A pair table is measured only while its cells' noise std stays below this share of the
# site's noisy total (about half a cell's count on a 5 x 5 table).
PAIR_NOISE_RATIO = 1 / 40
Pair = tuple[str, str]


@dataclass(frozen=True)
class RoundZeroSplit:
    """One round-0 Gaussian release (noise multiplier ``noise_multiplier``) shared between the
    outcome tables and ``pairs_share`` of it for the pairs (half of that to choose them).

    Renyi DP at order alpha: a Gaussian costs ``alpha / (2 z^2)``, the picks ``alpha * rho``;
    the parts add up to the whole's ``alpha / (2 noise_multiplier^2)`` exactly."""

    noise_multiplier: float
    pairs_share: float

    @property
    def tables(self) -> float:
        """The outcome tables' noise multiplier."""
        return self.noise_multiplier / math.sqrt(1.0 - self.pairs_share)

    @property
    def pair_tables(self) -> float:
        """The pair tables' noise multiplier (per unit of their L2 sensitivity)."""
        return self.noise_multiplier / math.sqrt(self.pairs_share * (1.0 - SELECTION_PART))

    @property
    def selection_rho(self) -> float:
        """zCDP rho of all picks together."""
        return self.pairs_share * SELECTION_PART / (2.0 * self.noise_multiplier ** 2)

    @property
    def first_release(self) -> float:
        """A federation's first round-0 release (outcome tables and votes): the whole's
        multiplier less the pair tables' part, which the second release spends; the two
        compose to ``noise_multiplier`` exactly (Renyi DP: ``1 / z^2`` adds up)."""
        return self.noise_multiplier / math.sqrt(1.0 - self.pairs_share * (1.0 - SELECTION_PART))

    def epsilon_each(self, count: int) -> float:
        """Each of ``count`` picks' epsilon: an eps-DP exponential mechanism is eps^2/8-zCDP."""
        return math.sqrt(8.0 * self.selection_rho / count)


def pair_key(pair: Pair, prefix: str = PAIR_PREFIX) -> str:
    """A pair table's wire key (a vote's with ``VOTE_PREFIX``)."""
    return f"{prefix}{pair[0]}|{pair[1]}"


def parse_pair_key(key: str, prefix: str = PAIR_PREFIX) -> Pair | None:
    """The pair a wire key with ``prefix`` names, or None when it names no pair."""
    if not key.startswith(prefix) or key.count("|") != 1:
        return None
    first, second = key[len(prefix):].split("|")
    return first, second


def candidate_pairs(columns: list[Column]) -> list[Pair]:
    """Every pair of ``columns`` (the measured columns: the outcome has its own tables), in schema order."""
    return [(a.name, b.name) for a, b in combinations(columns, 2)]


def group_count(column: Column) -> int:
    """A column's groups in a pair table (schema only): its levels, or at most ``PAIR_GROUPS``
    numeric groups; 'missing' included when nullable."""
    if column.is_categorical:
        return bin_labels(column)
    return min(PAIR_GROUPS, numeric_bins(column)) + int(column.nullable)


def pair_shape(schema: Schema, pair: Pair) -> tuple[int, int]:
    return group_count(schema.column(pair[0])), group_count(schema.column(pair[1]))


def group_bounds(column: Column, marginals: Marginals) -> np.ndarray:
    """Bounds (public bin indices, from 0 to the number of bins) of a numeric column's groups:
    at the quantiles of the noisy one-way counts ``marginals`` holds, at least one bin each."""
    bins = numeric_bins(column)
    groups = min(PAIR_GROUPS, bins)
    probs = marginals.probabilities(column.name, floor=0.0)[:bins]
    cdf = np.cumsum(probs / probs.sum()) if probs.sum() > 0 else np.arange(1, bins + 1) / bins
    bounds = [0]
    for j in range(1, groups):
        inner = int(np.searchsorted(cdf, j / groups)) + 1
        bounds.append(min(max(inner, bounds[-1] + 1), bins - (groups - j)))
    return np.asarray([*bounds, bins], dtype=float)


def own_group_bounds(columns: list[Column], outcome_tables: Marginals) -> dict[str, np.ndarray]:
    """A site's own group bounds of its numeric ``columns``, from its noisy ``outcome_tables``."""
    return {c.name: group_bounds(c, outcome_tables) for c in columns if not c.is_categorical}


def group_index(column: Column, series: pd.Series, bounds: np.ndarray | None) -> np.ndarray:
    """Each row's group of ``column`` in a pair table ('missing' last)."""
    return bin_groups(column, bin_index(column, series), bounds)


def bin_groups(column: Column, index: np.ndarray, bounds: np.ndarray | None) -> np.ndarray:
    """The pair-table group of each public bin ``index`` of ``column`` ('missing' last)."""
    if column.is_categorical or bounds is None:
        return index
    present = np.searchsorted(bounds[1:-1], index, side="right")
    if column.nullable:
        return np.where(index == bin_labels(column) - 1, len(bounds) - 1, present)
    return np.asarray(present)


def pair_cells(frame: pd.DataFrame, schema: Schema, pair: Pair, bounds: dict[str, np.ndarray]) -> np.ndarray:
    """Each row's cell of a pair table, row-major over :func:`pair_shape` (the layout of the
    tables on the wire and of :meth:`Marginals.pair_distribution`)."""
    first, second = schema.column(pair[0]), schema.column(pair[1])
    _, cols = pair_shape(schema, pair)
    return np.asarray(group_index(first, frame[first.name], bounds.get(first.name)) * cols
                      + group_index(second, frame[second.name], bounds.get(second.name)))


def exact_pair_table(frame: pd.DataFrame, schema: Schema, pair: Pair, bounds: dict[str, np.ndarray]) -> np.ndarray:
    """Exact counts of a pair table. Of private rows: only scored for the votes or measured with
    noise (:func:`vote_pairs`, :func:`measure_pair_tables`)."""
    rows, cols = pair_shape(schema, pair)
    return np.bincount(pair_cells(frame, schema, pair, bounds), minlength=rows * cols).astype(float).reshape(rows, cols)


class OutcomeModel:
    """What the site's noisy outcome tables say of a pair table: each outcome class's rows with
    the two columns independent, each column's groups as the tables give them. Built from
    released outputs only, so a score against it moves by at most :data:`SCORE_SENSITIVITY`
    when a record does."""

    def __init__(self, columns: list[Column], tables: Marginals, bounds: dict[str, np.ndarray]) -> None:
        self.class_totals = tables.class_totals()
        self.conditionals = {  # P(group | class) of each measured column, groups × classes
            c.name: tables.conditional(c.name, bin_groups(c, np.arange(bin_labels(c)), bounds.get(c.name)),
                                       group_count(c))
            for c in columns}

    def expected(self, pair: Pair) -> np.ndarray:
        """The pair table this model predicts."""
        return np.asarray(np.einsum("ik,jk,k->ij", self.conditionals[pair[0]], self.conditionals[pair[1]],
                                    self.class_totals), dtype=float)


def misfit_score(exact: np.ndarray, expected: np.ndarray, noise_std: float) -> float:
    """How much measuring a pair would teach about how its columns move together, beyond
    ``expected``: the L1 distance of the exact table from it, less the larger of its two
    margins' L1 distances (what the table's one-way counts alone would fix, which the other
    tables already pin down) and less the expected L1 error of the table measured with
    ``noise_std`` (sqrt(2 / pi) std per cell). The distance is never below either margin's,
    so the first part is never negative. ``expected`` does not depend on the private rows, so a
    record moves the distance by at most 1 and the larger margin distance by at most 1: the
    score by at most :data:`SCORE_SENSITIVITY` = 2."""
    margins = max(float(np.abs(exact.sum(axis=1) - expected.sum(axis=1)).sum()),
                  float(np.abs(exact.sum(axis=0) - expected.sum(axis=0)).sum()))
    return float(np.abs(exact - expected).sum() - margins - math.sqrt(2.0 / math.pi) * noise_std * exact.size)


def affordable_pairs(total: float, multipliers: list[float], columns: int) -> int:
    """How many pair tables a federation measures (public: from noisy totals and the noise).

    Each site measures the same ``k`` tables, each cell with noise std ``multiplier * sqrt(k)``
    (its own ``multipliers`` entry); the sites' tables add up, so a cell of the sum has std
    ``sqrt(k * sum(multipliers^2))``. ``k`` is the most that keeps it under ``PAIR_NOISE_RATIO``
    of the summed noisy ``total``: at least 1, at most a spanning tree's edges."""
    if columns < 2 or not multipliers:
        return 0
    affordable = math.floor((total * PAIR_NOISE_RATIO) ** 2 / sum(m * m for m in multipliers))
    return int(min(max(affordable, 1), columns - 1))


def vote_count(total: float, multiplier: float, columns: int, sites: int) -> int:
    """How many pairs a site votes for: as many as a federation of ``sites`` sites of its own
    noisy size could measure (it knows no other site's size)."""
    return affordable_pairs(total * sites, [multiplier] * max(sites, 1), columns)


def pick_pair(scores: dict[Pair, float], epsilon: float, rng: np.random.Generator) -> Pair:
    """One ``epsilon``-DP pick by the exponential mechanism: Gumbel-max with scale
    ``2 * SCORE_SENSITIVITY / epsilon``."""
    candidates = list(scores)
    noisy = np.asarray([scores[pair] for pair in candidates]) + rng.gumbel(0.0, 2.0 * SCORE_SENSITIVITY / epsilon,
                                                                          size=len(candidates))
    return candidates[int(np.argmax(noisy))]


class Forest:
    """The trees the picked pairs form (Kruskal's union-find): a pick must join two of them."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def root(self, name: str) -> str:
        while self.parent.get(name, name) != name:
            name = self.parent[name]
        return name

    def joins(self, pair: Pair) -> bool:
        return self.root(pair[0]) != self.root(pair[1])

    def join(self, pair: Pair) -> None:
        self.parent[self.root(pair[0])] = self.root(pair[1])


def vote_pairs(frame: pd.DataFrame, schema: Schema, columns: list[Column], outcome_tables: Marginals,
               split: RoundZeroSplit, count: int, rng: np.random.Generator, sites: int = 1) -> list[Pair]:
    """Step 1 of the module: ``count`` picks, each ``split.epsilon_each(count)``-DP, among the
    pairs joining two trees of the forest picked so far, scored against the site's noisy
    ``outcome_tables`` (each numeric column grouped at their quantiles). The site's votes.

    A table is used as the sum of ``sites`` sites' tables: its counts grow ``sites`` times, its
    noise ``sqrt(sites)`` times, so a site's share of that noise is its own table's over
    ``sqrt(sites)``. Scored at a site's own noise, a pair of a numeric column (five groups a
    column) lost to every 2 x 2 pair: azpro's admission type and length of stay, the one pair
    that answers the admission question, was never chosen in three runs."""
    groups = own_group_bounds(columns, outcome_tables)
    std = split.pair_tables * math.sqrt(count / max(sites, 1))
    model, forest = OutcomeModel(columns, outcome_tables, groups), Forest()
    scores = {pair: misfit_score(exact_pair_table(frame, schema, pair, groups), model.expected(pair), std)
              for pair in candidate_pairs(columns)}
    picks: list[Pair] = []
    for _ in range(count):  # count < len(columns) and every pair is a candidate: one always joins two trees
        pick = pick_pair({pair: score for pair, score in scores.items() if forest.joins(pair)},
                         split.epsilon_each(count), rng)
        forest.join(pick)
        picks.append(pick)
    return picks


def measure_pair_tables(frame: pd.DataFrame, schema: Schema, pairs: list[Pair], bounds: dict[str, np.ndarray],
                        multiplier: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Step 3 of the module: each of ``pairs`` (numeric columns grouped by ``bounds``) with
    Gaussian noise of std ``multiplier * sqrt(len(pairs))``: every record adds one count to each
    table, so this is one Gaussian mechanism with ``multiplier``. Keyed for the wire."""
    std = multiplier * math.sqrt(len(pairs))
    arrays = {}
    for pair in pairs:
        exact = exact_pair_table(frame, schema, pair, bounds)
        arrays[pair_key(pair)] = gaussian_counts(exact, std, rng)
    return arrays


def measure_pairs(frame: pd.DataFrame, schema: Schema, columns: list[Column], outcome_tables: Marginals,
                  noise_multiplier: float, pairs_share: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A site alone (``fedsyn fit``): its votes (:func:`vote_pairs`), as many as its noisy
    total affords, then their tables (:func:`measure_pair_tables`) with their group bounds,
    keyed for the wire. ``noise_multiplier`` is the whole round-0 release's (the caller has
    charged it); ``outcome_tables`` are the site's noisy outcome tables already drawn."""
    if pairs_share <= 0 or len(columns) < 2:
        return {}
    split = RoundZeroSplit(noise_multiplier, pairs_share)
    count = affordable_pairs(outcome_tables.total(), [split.pair_tables], len(columns))
    picks = vote_pairs(frame, schema, columns, outcome_tables, split, count, rng)
    bounds = own_group_bounds(columns, outcome_tables)
    return {**measure_pair_tables(frame, schema, picks, bounds, split.pair_tables, rng),
            **bounds_arrays(picks, bounds)}


def bounds_arrays(pairs: list[Pair], bounds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The group bounds of the numeric columns of ``pairs``, keyed for the wire."""
    names = sorted({name for pair in pairs for name in pair} & set(bounds))
    return {f"{BOUNDS_PREFIX}{name}": bounds[name] for name in names}


def vote_arrays(picks: list[Pair]) -> dict[str, np.ndarray]:
    """A site's votes keyed for the wire: each picked pair with its pick's rank (0 first)."""
    return {pair_key(pair, VOTE_PREFIX): np.array([float(rank)]) for rank, pair in enumerate(picks)}


def chosen_pairs(asked: list[Pair], votes: list[list[Pair]], count: int, site_column: str | None = None
                 ) -> list[Pair]:
    """The pairs a federation measures: every pair the study asked (:func:`asked_pairs`), then the
    voted ones (:func:`shared_pairs`) up to ``count`` in all."""
    voted = [pair for pair in shared_pairs(votes, count + len(asked), site_column) if pair not in asked]
    return [*asked, *voted[:max(count - len(asked), 0)]]


def shared_pairs(votes: list[list[Pair]], count: int, site_column: str | None = None) -> list[Pair]:
    """The federation's pairs (FLAIM's federated selection, Maddock et al., KDD 2024, by the
    sites' DP votes): the ``count`` pairs most sites picked, a tie going to the earlier mean
    rank (a site picks its strongest pairs first), then to the names' order, never to the order
    the replies came in (a coordinator that asks again chooses the same pairs). Post-processing
    of the votes.

    No pair of the federation's ``site_column`` is chosen: that column holds one value at each
    site, so its table with any column is the sum of what each site's outcome tables already
    say, measured again (nwtco's runs spent two of their five pair tables on it)."""
    tally: dict[Pair, list[int]] = {}
    for picks in votes:
        for rank, pair in enumerate(picks):
            if site_column not in pair:
                tally.setdefault(pair, []).append(rank)
    order = sorted(tally, key=lambda pair: (-len(tally[pair]), float(np.mean(tally[pair])), pair))
    return order[:count]


def check_pair_array(schema: Schema, key: str, value: np.ndarray) -> None:
    """A pair table, a vote or group bounds as received: a known pair or numeric column, the
    shape the schema gives, a vote's rank a whole number below the measured columns' count,
    bounds increasing from 0 to the number of bins. Raises ValueError."""
    pair = parse_pair_key(key)
    if pair is not None:
        check_pair(schema, pair)
        if value.shape != pair_shape(schema, pair):
            raise ValueError(f"'{key}' has shape {value.shape}, expected {pair_shape(schema, pair)}")
        return
    vote = parse_pair_key(key, VOTE_PREFIX)
    if vote is not None:
        check_pair(schema, vote)
        if value.shape != (1,) or not 0 <= value[0] < len(_measured_names(schema)) or value[0] != round(value[0]):
            raise ValueError(f"'{key}' is not a vote's rank")
        return
    name = key[len(BOUNDS_PREFIX):] if key.startswith(BOUNDS_PREFIX) else None
    if name is None or name not in schema.column_names or schema.column(name).is_categorical:
        raise ValueError(f"'{key}' is neither a pair table nor a numeric column's group bounds")
    column = schema.column(name)
    groups = group_count(column) - int(column.nullable)
    if value.shape != (groups + 1,) or value[0] != 0 or value[-1] != numeric_bins(column) \
            or not (np.diff(value) >= 1).all() or not np.array_equal(value, np.round(value)):
        raise ValueError(f"'{key}' are not group bounds of '{name}'")


def _measured_names(schema: Schema) -> list[str]:
    """The columns a pair may name: every one but the outcome (which has its own tables)."""
    return [name for name in schema.column_names if name != schema.outcome]


def check_pair(schema: Schema, pair: Pair) -> None:
    """``pair`` names two measured columns in schema order. Raises ValueError."""
    names = set(_measured_names(schema))
    if pair[0] not in names or pair[1] not in names \
            or schema.column_names.index(pair[0]) >= schema.column_names.index(pair[1]):
        raise ValueError(f"'{pair[0]}|{pair[1]}' names no pair of measured columns in schema order")


def split_pairs_text(text: str) -> list[str]:
    """Pairs written 'first:second,third:fourth' (on the command line, in a run config, which
    holds no list), each pair's text as :func:`asked_pairs` reads it."""
    return [pair for pair in str(text).split(",") if pair.strip()]


def asked_pairs(schema: Schema, asked: list[str], site_column: str | None = None) -> list[Pair]:
    """The pairs a study asks to be measured (``'first:second'`` each, public: the researchers'
    questions), each in schema order. They are measured before any pair the sites vote for, at no
    cost of choosing them: a study whose strongest relations (creatinine × urea, age × albumin)
    the votes missed got them back as none (helper-112). Raises ValueError naming what is wrong."""
    pairs: list[Pair] = []
    names = _measured_names(schema)
    for text in asked:
        parts = [part.strip() for part in str(text).split(":")]
        if len(parts) != 2 or parts[0] == parts[1] or not all(part in names for part in parts) \
                or site_column in parts:
            raise ValueError(f"pair '{text}': name two different columns of the schema as 'first:second', neither "
                             f"the outcome nor the site column (columns: {', '.join(names)})")
        pair = tuple(sorted(parts, key=schema.column_names.index))
        if pair in pairs:
            raise ValueError(f"pair '{text}' is asked twice")
        pairs.append((pair[0], pair[1]))
    if len(pairs) > max(len(names) - 1, 1):
        raise ValueError(f"{len(pairs)} pairs asked: at most {max(len(names) - 1, 1)} (one fewer than the columns "
                         "besides the outcome) are measured in one run")
    return pairs


def check_pair_request(schema: Schema, pairs: list[Pair], bounds: dict[str, np.ndarray]) -> None:
    """Pair tables asked of a site: pairs of measured columns in schema order, group bounds of
    numeric columns only, every numeric column of a pair with its bounds, at most a spanning
    tree's pairs (what a coordinator chooses; more would only make the site's work, whose time
    grows with its rows, longer). Raises ValueError."""
    measured = len(_measured_names(schema))
    if len(pairs) > max(measured - 1, 1):
        raise ValueError(f"{len(pairs)} pairs asked, more than the {measured - 1} a spanning tree of the "
                         "measured columns has")
    for pair in pairs:
        check_pair(schema, pair)
    for name, values in bounds.items():
        check_pair_array(schema, f"{BOUNDS_PREFIX}{name}", values)
    numeric = {name for pair in pairs for name in pair if not schema.column(name).is_categorical}
    if numeric - set(bounds):
        raise ValueError(f"pairs of {sorted(numeric - set(bounds))[:3]} are asked without group bounds")


def check_pairs(schema: Schema, marginals: Marginals) -> None:
    """A site's pair tables as received (every one checked, each numeric column's group bounds
    present). Raises ValueError."""
    for key, value in marginals.arrays.items():
        if key.startswith((PAIR_PREFIX, BOUNDS_PREFIX, VOTE_PREFIX)):
            check_pair_array(schema, key, value)
    if sorted(marginals.votes.values()) != list(range(len(marginals.votes))):
        raise ValueError("the votes' ranks are not 0, 1, 2, ...")
    require_group_bounds(schema, marginals)


def require_group_bounds(schema: Schema, marginals: Marginals) -> None:
    """Every numeric column of a pair table comes with its groups' bounds. Raises ValueError."""
    numeric = {name for pair in marginals.pairs for name in pair if not schema.column(name).is_categorical}
    if numeric - set(marginals.pair_bounds):
        raise ValueError(f"pair tables of {sorted(numeric - set(marginals.pair_bounds))[:3]} come without group bounds")

"""A release pool whose numbers relate only as the sites measured: post-processing of DP outputs.

The generator learns how columns move together from its matching terms (each column by outcome
class at each site, and the pair tables) and from a DP-SGD discriminator whose noise, at a
federation's ε, drowns nearly all it could say of any other pair. What neither taught it is
left where its initialisation and that noise put it. On a newcomer's extract of lab values that
are independent in the real rows, the release invented correlations of ±.3 to ±.7 (at ε = 1:
creatinine with glucose −.50, glucose with haemoglobin −.47; at ε = 10, −.69; real −.09 and
+.05), and reversed age with creatinine (+.51 real, −.28 released) where that pair was not
measured: a researcher would read associations no hospital has.

So before the pool is raked (:mod:`fedsyn.model.raking`), each numeric column's values are
permuted among the pool rows that share the site slot, the outcome class, the groups of every
column the federation measured a pair table with (its *partners*) and the values of every
categorical column a schema rule ties it to. A permutation within those strata keeps the
column's values per slot and class and its table with every partner exactly, so everything the
raking reads, and leaves it independent of every other column given them: the maximum-entropy
answer where the tables are silent, as Private-PGM's graphical model gives (McKenna et al.,
2019). Every relation of a numeric column that no table or rule covers comes out that way: with
another numeric column (none invented, none reversed beyond what shared partners and the outcome
imply), with a categorical column, and its missing cells' pattern. With a partner, the relation
is kept at the pair table's groups, not within them. Numeric columns a rule ties together (one
value at most another, one missing when another is in a range) move as one block, and so keep
whatever the generator put between them.

Categorical columns keep the generator's relations. Moved too, they cost the bench's other
questions .016–.020 of ROC-AUC on nwtco and rotterdam (seed 0), where the numeric columns alone
moved them within the seeds' spread. A numeric column keeps the generator's relation with its
partners' groups (the raking then holds them to the table): moved apart from them too, and
raked back to the tables' groups, nwtco's outcome lost .03 and nmes' quality .03 (seed 0).

Only the pool, the pair tables' keys and their group bounds are read, with the release's own
random stream: no privacy cost, nothing new is published.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from fedsyn.data.schema import Schema
from fedsyn.privacy.pairs import Forest, Pair, group_index


def numbers_as_measured(frame: pd.DataFrame, schema: Schema, strata: np.ndarray, pairs: Sequence[Pair],
                        bounds: dict[str, np.ndarray], rng: np.random.Generator
                        ) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """``frame`` (a decoded pool, its missing-by-design cells imposed) with each numeric column
    permuted as the module says, and each moved column's permutation (row ``i`` took the value of
    row ``order[i]``), to move the encoded pool alike. ``strata`` holds each row's slot and
    outcome class; ``pairs`` are the measured pairs, ``bounds`` their numeric groups' bounds.
    Blocks move one after another, in schema order, each reading its partners as already moved,
    so that every measured pair's joint groups survive every later move."""
    movable = [column.name for column in schema.columns if not column.is_categorical and column.name in frame.columns
               and column.name != schema.outcome]
    tied = _rule_columns(schema)
    moved = frame.copy()
    orders: dict[str, np.ndarray] = {}
    for block in _blocks(tied, movable):
        keys = [np.asarray(strata)]
        for name in _anchors(tied, pairs, block, movable):
            keys.append(np.asarray(group_index(schema.column(name), moved[name], bounds.get(name))))
        order = _within(_combined(keys), rng)
        for name in block:
            orders[name] = order
            moved[name] = moved[name].take(order).set_axis(moved.index)
    return moved, orders


def _rule_columns(schema: Schema) -> list[set[str]]:
    """The columns each schema rule reads or sets."""
    tied = []
    for rule in schema.rules:
        names = {rule.require.column, rule.require.other_column}
        if rule.when is not None:
            names |= {rule.when.column, rule.when.other_column}
        tied.append({name for name in names if name is not None})
    return tied


def _blocks(tied: list[set[str]], movable: Sequence[str]) -> list[list[str]]:
    """``movable`` grouped into the blocks that move together: those a rule (``tied``: each rule's
    columns) ties, directly or through another movable column, each block in ``movable``'s order."""
    forest = Forest()
    for names in tied:
        present = [name for name in movable if name in names]
        for name in present[1:]:
            if forest.joins((name, present[0])):
                forest.join((name, present[0]))
    blocks: dict[str, list[str]] = {}
    for name in movable:
        blocks.setdefault(forest.root(name), []).append(name)
    return list(blocks.values())


def _anchors(tied: list[set[str]], pairs: Sequence[Pair], block: Sequence[str], movable: Sequence[str]) -> list[str]:
    """The columns a ``block`` keeps its relation with: its partners in ``pairs`` and the columns
    a rule (``tied``) ties it to that do not move themselves."""
    inside = set(block)
    found = {b if a in inside else a for a, b in pairs if (a in inside) != (b in inside)}
    for names in tied:
        if names & inside:
            found |= names - set(movable)
    return sorted(found)


def _combined(keys: list[np.ndarray]) -> np.ndarray:
    """One stratum number per row for the rows' tuples of ``keys`` (mixed radix, renumbered after
    each key so that it never overflows)."""
    stratum = np.zeros(len(keys[0]), dtype=np.int64)
    for key in keys:
        values = np.unique(key, return_inverse=True)[1].ravel()
        stratum = np.unique(stratum * (int(values.max(initial=0)) + 1) + values, return_inverse=True)[1].ravel()
    return stratum


def _within(stratum: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random permutation that sends each row to a row of its own stratum."""
    order = np.arange(len(stratum))
    by_stratum = np.argsort(stratum, kind="stable")
    starts = np.flatnonzero(np.diff(stratum[by_stratum])) + 1
    for rows in np.split(by_stratum, starts):
        order[rows] = rows[rng.permutation(len(rows))]
    return order

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
2019). A column whose pair is not measured comes out unrelated, never reversed. Numeric columns
a rule ties together (one value at most another, one missing when another is in a range) move
as one block.

Categorical columns keep the generator's relations. Moved too, they cost the bench's other
questions .016–.020 of ROC-AUC on nwtco and rotterdam (seed 0), where the numeric columns alone
moved them within the seeds' spread. A numeric column keeps the generator's relation with its
partners (the raking then holds their groups to the table): moved apart from them too, and
raked back to the tables' groups, nwtco's outcome lost .03 and nmes' quality .03 (seed 0).

Only the pool, the pair tables' keys and their group bounds are read, with the release's own
random stream: no privacy cost, nothing new is published.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from fedsyn.data.schema import Schema
from fedsyn.privacy.marginals import Marginals
from fedsyn.privacy.pairs import group_index


def _rule_columns(schema: Schema) -> list[set[str]]:
    """The columns each schema rule reads or sets."""
    tied = []
    for rule in schema.rules:
        names = {rule.require.column, rule.require.other_column}
        if rule.when is not None:
            names |= {rule.when.column, rule.when.other_column}
        tied.append({name for name in names if name is not None})
    return tied


def moving_blocks(schema: Schema, movable: Sequence[str]) -> list[list[str]]:
    """``movable`` columns grouped into the blocks that move together: those a schema rule ties
    (directly or through another movable column), each block in ``movable``'s order."""
    parent = {name: name for name in movable}

    def root(name: str) -> str:
        while parent[name] != name:
            name = parent[name]
        return name

    for names in _rule_columns(schema):
        present = [name for name in movable if name in names]
        for name in present[1:]:
            parent[root(name)] = root(present[0])
    blocks: dict[str, list[str]] = {}
    for name in movable:
        blocks.setdefault(root(name), []).append(name)
    return list(blocks.values())


def anchors(schema: Schema, tables: Marginals, block: Sequence[str], movable: Sequence[str]) -> list[str]:
    """The columns a ``block`` keeps its relation with: its partners in ``tables``' pairs and the
    columns a rule ties it to that do not move themselves."""
    inside = set(block)
    found = {b if a in inside else a for a, b in tables.pairs if (a in inside) != (b in inside)}
    for names in _rule_columns(schema):
        if names & inside:
            found |= names - set(movable)
    return sorted(found)


def independent_where_unmeasured(frame: pd.DataFrame, schema: Schema, strata: np.ndarray, tables: Marginals,
                                 fixed: Sequence[str], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per numeric column of ``frame`` (a decoded pool) not in ``fixed``, the row permutation it
    takes: row ``i`` gets the value of row ``order[i]``, a row of the same ``strata`` (slot and
    outcome class) and the same groups of its :func:`anchors`. Applied block after block in
    schema order, reading partners already moved as moved, so that every measured pair's joint
    groups survive every later move."""
    movable = [column.name for column in schema.columns
               if not column.is_categorical and column.name in frame.columns and column.name not in fixed]
    moved = frame.copy()
    orders: dict[str, np.ndarray] = {}
    for block in moving_blocks(schema, movable):
        keys = [np.asarray(strata, dtype=np.int64)]
        for name in anchors(schema, tables, block, movable):
            keys.append(np.asarray(group_index(schema.column(name), moved[name], tables.pair_bounds.get(name)),
                                   dtype=np.int64))
        stratum = np.unique(np.stack(keys, axis=1), axis=0, return_inverse=True)[1].ravel()
        order = within_strata(stratum, rng)
        for name in block:
            orders[name] = order
            moved[name] = moved[name].to_numpy()[order]
    return orders


def within_strata(stratum: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random permutation that sends each row to a row of its own stratum."""
    order = np.arange(len(stratum))
    by_stratum = np.argsort(stratum, kind="stable")
    starts = np.flatnonzero(np.diff(stratum[by_stratum])) + 1
    for rows in np.split(by_stratum, starts):
        order[rows] = rows[rng.permutation(len(rows))]
    return order

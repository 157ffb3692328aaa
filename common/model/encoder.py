"""Reversible encoding of a table into the GAN's vector space, built from public facts only.

Categorical columns become one-hot blocks (the generator emits them through softmax
heads). Numeric columns become one value in [-1, 1] through a monotone map between the
schema's public bounds: linear (or log) by default, or the CDF of the *noisy* marginal
histograms when DP statistics were released and charged. Nullable columns get an explicit
"missing" category (categoricals) or a present/missing block (numerics). Decoding always
returns rows that satisfy the schema.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from fedsyn.data.grid import (
    MISSING,
    atom_bins,
    forward_transform,
    inverse_transform,
    numeric_edges,
    snap_to_atoms,
    to_precision,
)
from fedsyn.data.schema import Column, ColumnKind, Schema, spell_category
from fedsyn.errors import ConfigurationError
from fedsyn.privacy.marginals import Marginals


@dataclass(frozen=True)
class Span:
    """A block of the encoded vector: a softmax group or one tanh value."""

    column: str
    activation: Literal["softmax", "tanh"]
    start: int
    end: int


class TableEncoder:
    """Encode/decode a DataFrame as float32 vectors; parameters come from schema + marginals."""

    def __init__(self, schema: Schema, marginals: Marginals | None = None):
        self.schema = schema
        self.marginals = marginals if marginals is not None else Marginals.uniform(schema)
        self.spans: list[Span] = []
        self._cdfs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        offset = 0
        for column in schema.columns:
            if column.is_categorical:
                width = len(self.categories_with_missing(column))
                self.spans.append(Span(column.name, "softmax", offset, offset + width))
                offset += width
                continue
            self.spans.append(Span(column.name, "tanh", offset, offset + 1))
            offset += 1
            if column.nullable:
                self.spans.append(Span(column.name, "softmax", offset, offset + 2))
                offset += 2
            self._cdfs[column.name] = self._numeric_cdf(column)
        self.dim = offset

    @staticmethod
    def categories_with_missing(column: Column) -> list[str]:
        if column.categories is None:  # the schema refuses this; kept for the type checker
            raise ConfigurationError(f"categorical column '{column.name}' has no categories")
        return [*column.categories, MISSING] if column.nullable else list(column.categories)

    def _numeric_cdf(self, column: Column) -> tuple[np.ndarray, np.ndarray]:
        probs = self.marginals.probabilities(column.name)
        if column.nullable:
            probs = probs[:-1] / probs[:-1].sum()
        cdf = np.concatenate([[0.0], np.cumsum(probs)])
        cdf[-1] = 1.0
        return numeric_edges(column), cdf

    def numeric_map(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """A numeric column's encoding: bin edges (transformed space) and the CDF at each edge."""
        return self._cdfs[name]

    def positions(self, name: str, transformed: np.ndarray) -> np.ndarray:
        """A numeric column's values on its grid's scale (``transformed``) as encoded positions in
        [-1, 1]: through the global CDF, a bound's values mid-way up its atom's share, not at +-1
        (where a generator's tanh can hardly reach)."""
        column = self.schema.column(name)
        edges, cdf = self._cdfs[name]
        u = np.interp(transformed, edges, cdf)
        atoms = atom_bins(column, transformed, edges)
        if atoms is not None:
            u = np.where(atoms[0], cdf[1] / 2, np.where(atoms[1], (cdf[-2] + 1) / 2, u))
        return np.asarray(2.0 * u - 1.0, dtype=float)

    def grid_values(self, name: str, positions: np.ndarray) -> np.ndarray:
        """A numeric column's encoded ``positions`` on its grid's scale (the inverse of
        :meth:`positions` outside the atoms' shares)."""
        edges, cdf = self._cdfs[name]
        return np.asarray(np.interp((np.clip(positions, -1.0, 1.0) + 1.0) / 2.0, cdf, edges), dtype=float)

    def categorical_spans(self) -> list[tuple[Column, Span]]:
        """The one-hot blocks of categorical columns, used for conditioning."""
        return [(self.schema.column(s.column), s) for s in self.spans
                if s.activation == "softmax" and self.schema.column(s.column).is_categorical]

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        out = np.zeros((len(frame), self.dim), dtype=np.float32)
        rows = np.arange(len(frame))
        for span in self.spans:
            column = self.schema.column(span.column)
            series = frame[column.name]
            missing = series.isna().to_numpy()
            if column.is_categorical:
                labels = series.map(spell_category).where(~missing, MISSING)  # as validation spells it
                # pandas keeps codes as int8 for small category lists: widen them before adding the
                # block's offset, which overflows (or wraps into another column) past position 127
                codes = pd.Categorical(labels, categories=self.categories_with_missing(column)).codes.astype(np.int64)
                if (codes < 0).any():
                    raise ValueError(f"column '{column.name}' holds values outside the schema: validate the data first")
                out[rows, span.start + codes] = 1.0
            elif span.activation == "softmax":  # present/missing block of a nullable numeric
                out[rows, span.start + missing.astype(int)] = 1.0
            else:
                values = np.asarray(np.where(missing, column.bounds[0], series.to_numpy(dtype=float, na_value=np.nan)))
                out[:, span.start] = np.where(missing, 0.0, self.positions(column.name,
                                                                           forward_transform(column, values)))
        return out

    def decode(self, encoded: np.ndarray) -> pd.DataFrame:
        columns: dict[str, object] = {}
        missing_numeric: dict[str, np.ndarray] = {}
        for span in self.spans:
            column = self.schema.column(span.column)
            block = encoded[:, span.start:span.end]
            if column.is_categorical:
                codes = block.argmax(axis=1)
                codes[codes == len(column.levels)] = -1  # the 'missing' slot of a nullable column
                columns[column.name] = pd.Categorical.from_codes(codes, categories=column.categories)
            elif span.activation == "softmax":
                missing_numeric[column.name] = block.argmax(axis=1) == 1
            else:
                edges, _ = self._cdfs[column.name]
                low, high = column.bounds
                transformed = self.grid_values(column.name, block[:, 0])
                values = snap_to_atoms(column, transformed, edges,
                                       np.clip(inverse_transform(column, transformed), low, high))
                columns[column.name] = to_precision(column, values)
        frame = pd.DataFrame(columns, columns=self.schema.column_names)
        for name, missing in missing_numeric.items():
            frame.loc[missing, name] = np.nan
        for column in self.schema.columns:
            if column.kind is ColumnKind.INTEGER:
                frame[column.name] = frame[column.name].astype("Int64" if column.nullable else "int64")
        return frame

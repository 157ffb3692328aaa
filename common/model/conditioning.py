"""Conditional vectors: which categorical column is fixed to which value.

As in CTGAN, each row's condition fixes one categorical column to one value. For real rows
the value is read from the row itself (inside the DP-SGD per-record computation). For
generated rows it is drawn from the *noisy* marginals, never from private frequencies, so
conditioning costs no privacy beyond what the ledger already holds.

The outcome column (if the schema names one) is chosen more often than the others
(``outcome_weight``), because synthetic data is mostly used to model the outcome given the
rest; real and generated rows use the same column-choice distribution, so the
discriminator cannot tell them apart by which column is conditioned.
"""

from __future__ import annotations

import numpy as np
import torch

from fedsyn.model.encoder import TableEncoder
from fedsyn.privacy.marginals import Marginals


class ConditionSampler:
    def __init__(self, encoder: TableEncoder, device: torch.device, outcome_weight: float = 0.5,
                 marginals: Marginals | None = None):
        """``marginals`` (default: the encoder's) are the noisy counts generated rows'
        condition values are drawn from; a federated site passes its own."""
        self.device = device
        source = marginals if marginals is not None else encoder.marginals
        self.columns: list[str] = []
        self.values: list[list[str]] = []
        encoded_index: list[int] = []
        block_of_dim: list[int] = []
        starts: list[int] = []
        probs: list[torch.Tensor] = []
        offset = 0
        for block, (column, span) in enumerate(encoder.categorical_spans()):
            width = span.end - span.start
            self.columns.append(column.name)
            self.values.append(encoder.categories_with_missing(column))
            encoded_index += list(range(span.start, span.end))
            block_of_dim += [block] * width
            starts.append(offset)
            probs.append(torch.as_tensor(source.probabilities(column.name), dtype=torch.float32))
            offset += width
        self.dim = offset
        self.encoded_index = torch.as_tensor(encoded_index, dtype=torch.long, device=device)
        self.block_of_dim = torch.as_tensor(block_of_dim, dtype=torch.long, device=device)
        self.block_start = torch.as_tensor(starts, dtype=torch.long, device=device)
        self.block_probs = [p.to(device) for p in probs]
        self.outcome = encoder.schema.outcome if encoder.schema.outcome in self.columns else None
        weights = torch.ones(len(self.columns))
        if self.outcome is not None and len(self.columns) > 1:
            others = len(self.columns) - 1
            weights[:] = (1.0 - outcome_weight) / others
            weights[self.columns.index(self.outcome)] = outcome_weight
        self.column_weights = (weights / weights.sum()).to(device)
        # The same weights for NumPy's choice (a real record's column, drawn on the mechanism's stream).
        probabilities = self.column_weights.double().cpu().numpy()
        self._column_probabilities = probabilities / probabilities.sum()

    def _choose_columns(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.multinomial(self.column_weights, n, replacement=True, generator=generator)

    def from_real(self, rows: torch.Tensor, generator: np.random.Generator) -> torch.Tensor:
        """Condition each real row on one of its own categorical values, its column drawn by the
        columns' weights from ``generator``: the DP mechanism's own stream. One draw per sampled
        record, so a stream that kept going afterwards would count the Poisson batch, which the
        accountant assumes hidden; a PyTorch stream keeps 32 bits of its seed (fifth review)."""
        if self.dim == 0 or rows.shape[0] == 0:  # a Poisson batch may be empty
            return rows.new_zeros((rows.shape[0], self.dim))
        chosen = torch.as_tensor(generator.choice(len(self.columns), size=rows.shape[0], p=self._column_probabilities),
                                 device=rows.device)
        mask = self.block_of_dim.unsqueeze(0) == chosen.unsqueeze(1)
        return rows[:, self.encoded_index] * mask

    def sample(self, n: int, generator: torch.Generator, column: str | None = None) -> torch.Tensor:
        """Conditions for generated rows: the column as in training (or ``column``), the value
        drawn from that column's noisy marginal."""
        cond = torch.zeros((n, self.dim), device=self.device)
        if self.dim == 0:
            return cond
        if column is None:
            chosen = self._choose_columns(n, generator)
        else:
            chosen = torch.full((n,), self.columns.index(column), device=self.device)
        for block, probs in enumerate(self.block_probs):
            rows = (chosen == block).nonzero(as_tuple=True)[0]
            if len(rows):
                values = torch.multinomial(probs, len(rows), replacement=True, generator=generator)
                cond[rows, self.block_start[block] + values] = 1.0
        return cond

    def fixed(self, n: int, column: str, value: object) -> torch.Tensor:
        """Conditions that fix ``column`` to ``value`` for all ``n`` rows."""
        if column not in self.columns:
            raise ValueError(f"can only condition on categorical columns {self.columns}, not '{column}'")
        block = self.columns.index(column)
        text = str(value)
        if text not in self.values[block]:
            raise ValueError(f"'{value}' is not a category of '{column}': choose one of {self.values[block]}")
        cond = torch.zeros((n, self.dim), device=self.device)
        cond[:, int(self.block_start[block]) + self.values[block].index(text)] = 1.0
        return cond

    def impose(self, rows: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Overwrite each row's conditioned categorical block with its condition's one-hot."""
        active = self.block_of_dim[cond.argmax(dim=1)]
        mask = self.block_of_dim.unsqueeze(0) == active.unsqueeze(1)
        rows = rows.clone()
        rows[:, self.encoded_index] = torch.where(mask, cond, rows[:, self.encoded_index])
        return rows

    def cross_entropy(self, raw: torch.Tensor, cond: torch.Tensor,
                      encoder_spans: list[tuple[int, int]]) -> torch.Tensor:
        """How far the generator's raw logits are from the values its conditions ask for."""
        if self.dim == 0:
            return raw.new_zeros(())
        total = raw.new_zeros(raw.shape[0])
        for block, (start, end) in enumerate(encoder_spans):
            target = cond[:, int(self.block_start[block]):int(self.block_start[block]) + (end - start)]
            total = total - (target * torch.log_softmax(raw[:, start:end], dim=1)).sum(dim=1)
        return total.mean()


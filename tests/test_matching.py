"""The generator's marginal-matching term: it must carry the outcome's relation to each column.

The benchmark's releases once reversed outcome relations (length of stay longer for the
procedure with the shorter stays); these tests fail if the matching term is off, reads the
wrong class, or matches the unconditional marginal instead of each class's.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from fedsyn.model.encoder import TableEncoder
from fedsyn.model.matching import TableMatcher, release_misfit
from fedsyn.model.training import GANTrainer
from fedsyn.privacy.marginals import Marginals, exact_counts
from fedsyn.privacy.randomness import torch_generator

from .helpers import TINY


def _matched_release(tables, schema, weight: float, steps: int = 150) -> pd.DataFrame:
    """A generator trained on the matching term alone (no rows, no discriminator), then sampled."""
    trainer = GANTrainer(TableEncoder(schema, tables), replace(TINY, matching_weight=weight),
                         rng=torch_generator(3, "matching-test"))
    trainer.fit_tables(steps)
    return trainer.sample_frame(3000)[0]


def test_matching_reproduces_each_outcome_class_of_the_tables(demo_frame, demo_schema):
    """Tables in which the dead are older and more often male than in the data: the release
    follows the tables class by class (a per-class target, not the pooled marginal)."""
    skewed = demo_frame.copy()
    dead = skewed["death"] == "dead"
    skewed.loc[dead, "age"] = np.clip(skewed.loc[dead, "age"] + 15, 50, 101)
    skewed.loc[dead, "sex"] = "M"
    skewed.loc[~dead, "sex"] = "F"
    release = _matched_release(exact_counts(skewed, demo_schema), demo_schema, weight=1.0)
    by_class = release.groupby("death", observed=True)
    real = skewed.groupby("death", observed=True)
    assert (by_class["sex"].apply(lambda s: (s == "M").mean()) - [0.0, 1.0]).abs().max() < 0.1
    gap, real_gap = (frame["age"].mean().diff().iloc[-1] for frame in (by_class, real))
    assert gap == pytest.approx(real_gap, abs=4.0)  # about 27 years older in the tables
    assert release["death"].value_counts(normalize=True)["dead"] == pytest.approx(dead.mean(), abs=0.05)


def test_the_loss_is_zero_only_for_the_tables_own_conditionals(demo_frame, demo_schema):
    tables = exact_counts(demo_frame, demo_schema)
    trainer = GANTrainer(TableEncoder(demo_schema, tables), TINY, rng=torch_generator(0, "t"))
    matcher = TableMatcher(trainer.encoder, trainer.conditions, trainer.device)
    rows = demo_frame.sample(4000, random_state=1)
    cond = trainer.conditions.from_real(torch.as_tensor(trainer.encoder.encode(rows)),
                                       np.random.default_rng(0))
    death = trainer.conditions.columns.index("death")
    start = int(trainer.conditions.block_start[death])
    cond = torch.zeros_like(cond)
    cond[torch.arange(len(rows)), start + torch.as_tensor((rows["death"] == "dead").to_numpy(), dtype=torch.long)] = 1
    raw = _logits_of(trainer.encoder, trainer.encoder.encode(rows))
    swapped = cond[:, [*range(start)] + [start + 1, start] + [*range(start + 2, cond.shape[1])]]
    assert float(matcher.loss(raw, cond)) < 0.2 * float(matcher.loss(raw, swapped))


def _logits_of(encoder: TableEncoder, encoded: np.ndarray) -> torch.Tensor:
    """Raw generator outputs whose heads reproduce ``encoded``: sharp logits for one-hot
    blocks, the inverse of tanh for numeric values."""
    raw = np.empty_like(encoded)
    for span in encoder.spans:
        block = encoded[:, span.start:span.end]
        raw[:, span.start:span.end] = (np.arctanh(np.clip(block, -0.999, 0.999)) if span.activation == "tanh"
                                       else block * 12.0 - 6.0)
    return torch.as_tensor(raw, dtype=torch.float32)


def test_release_misfit_is_near_zero_for_the_tables_own_rows_and_grows_when_the_outcome_is_lost(
        demo_frame, demo_schema, monkeypatch):
    """The measure the coordinator picks the release's round by: rows that are the tables'
    own score about 0; the same rows with the outcome shuffled (each column's relation to
    the outcome lost, every one-way marginal kept) score clearly worse. Its rows come from
    the stream it is handed, not from the trainer's own."""
    rows = demo_frame.head(2000).reset_index(drop=True)
    trainer = GANTrainer(TableEncoder(demo_schema, exact_counts(rows, demo_schema)), TINY,
                         rng=torch_generator(5, "misfit-test"))
    outcome = demo_schema.outcome
    shuffled = rows.assign(**{outcome: rows[outcome].sample(frac=1.0, random_state=0).to_numpy()})
    own_stream = trainer.rng.get_state()
    first = release_misfit(trainer, torch_generator(1, "misfit"))
    assert first == release_misfit(trainer, torch_generator(1, "misfit"))  # same stream, same model: same score
    assert torch.equal(trainer.rng.get_state(), own_stream)  # the release's own stream is left alone
    scores = []
    for frame in (rows, shuffled):
        monkeypatch.setattr(trainer, "generate", lambda n, rng=None, frame=frame: trainer.encoder.encode(frame))
        scores.append(release_misfit(trainer, torch_generator(1, "misfit")))
    assert scores[0] < 0.005 and scores[1] > 0.05


def test_fit_tables_brings_a_fresh_generator_to_the_tables_and_samples_from_it(demo_frame, demo_schema):
    """The coordinator's steps before round 1: a fresh generator trained on the tables alone
    sits far closer to them, and the release samples from what was trained; 0 steps change nothing."""
    tables = exact_counts(demo_frame.head(2000), demo_schema)
    fresh, fitted = (GANTrainer(TableEncoder(demo_schema, tables), TINY, rng=torch_generator(6, "fit-tables"))
                     for _ in range(2))
    before = {name: value.clone() for name, value in fitted.generator.state_dict().items()}
    fitted.fit_tables(0)
    assert all(torch.equal(value, before[name]) for name, value in fitted.generator.state_dict().items())
    fitted.fit_tables(150)
    for name, value in fitted.sampler.state_dict().items():
        assert torch.equal(value, fitted.generator.state_dict()[name])
    untrained, trained = (release_misfit(t, torch_generator(1, "misfit")) for t in (fresh, fitted))
    assert trained < 0.3 * untrained  # measured: .06 against .42


def _encoded_batch(trainer: GANTrainer, rows: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw outputs reproducing ``rows`` and their outcome conditions."""
    death = trainer.conditions.columns.index("death")
    start = int(trainer.conditions.block_start[death])
    cond = torch.zeros((len(rows), trainer.conditions.dim))
    cond[torch.arange(len(rows)), start + torch.as_tensor((rows["death"] == "dead").to_numpy(), dtype=torch.long)] = 1
    return _logits_of(trainer.encoder, trainer.encoder.encode(rows)), cond


def test_each_slots_rows_are_matched_to_its_own_sites_tables(demo_frame, demo_schema):
    """Two hospitals, one of women and one of men: the matching term is low when each slot's
    rows are its own site's and high when the slots are swapped (the summed tables alone
    cannot tell)."""
    women, men = demo_frame[demo_frame["sex"] == "F"].head(1500), demo_frame[demo_frame["sex"] == "M"].head(1500)
    sites = [exact_counts(women, demo_schema), exact_counts(men, demo_schema)]
    trainer = GANTrainer(TableEncoder(demo_schema, sites[0] + sites[1]), replace(TINY, site_slots=2),
                         rng=torch_generator(0, "t"))
    trainer.set_release_slots([len(women), len(men)], sites)
    raw, cond = _encoded_batch(trainer, pd.concat([women, men]))
    slots = torch.as_tensor([0] * len(women) + [1] * len(men))
    assert trainer.matcher is not None
    assert float(trainer.matcher.loss(raw, cond, slots)) < 0.5 * float(trainer.matcher.loss(raw, cond, 1 - slots))


def test_the_slot_term_is_the_mean_divergence_of_every_slot_class_and_column(demo_frame, demo_schema):
    """The slot term, computed for every block at once, is the textbook mean over slots, classes
    and categorical columns of KL(the site's P(value | class) || the rows' mean softmax)."""
    halves = [demo_frame.head(1500), demo_frame.iloc[1500:3000]]
    sites = [exact_counts(half, demo_schema) for half in halves]
    trainer = GANTrainer(TableEncoder(demo_schema, sites[0] + sites[1]), replace(TINY, site_slots=2),
                         rng=torch_generator(0, "t"))
    trainer.set_release_slots([1500, 1500], sites)
    raw = torch.randn((400, trainer.encoder.dim), generator=torch.Generator().manual_seed(0))
    labels = torch.arange(400) % 2
    death = trainer.conditions.columns.index("death")
    cond = torch.zeros((400, trainer.conditions.dim))
    cond[torch.arange(400), int(trainer.conditions.block_start[death]) + labels] = 1
    slots = (torch.arange(400) // 7) % 2
    divergences = []
    for slot, marginals in enumerate(sites):
        for label in (0, 1):
            rows = raw[(slots == slot) & (labels == label)]
            for span in trainer.encoder.spans:
                if not demo_schema.column(span.column).is_categorical or span.column == "death":
                    continue
                produced = torch.softmax(rows[:, span.start:span.end], dim=1).mean(dim=0).clamp_min(1e-6)
                target = torch.as_tensor(marginals.conditional(span.column)[:, label], dtype=torch.float32)
                target = target.clamp_min(1e-6)
                divergences.append(float((target * (target.log() - produced.log())).sum()))
    assert trainer.matcher is not None
    assert float(trainer.matcher._slot_table_loss(raw, cond, slots)) == pytest.approx(np.mean(divergences), rel=1e-5)


def test_pair_tables_hold_the_generated_rows_to_how_two_columns_move_together(demo_frame, demo_schema):
    """A pair table of kappa and lambda (two light chains that rise together): rows that keep
    the relation match it far better than the same rows with lambda shuffled."""
    from fedsyn.privacy.pairs import exact_pair_table, group_bounds, pair_key

    rows = demo_frame.sample(3000, random_state=2)
    tables = exact_counts(rows, demo_schema)
    bounds = {name: group_bounds(demo_schema.column(name), tables) for name in ("kappa", "lambda")}
    pair = exact_pair_table(rows, demo_schema, ("kappa", "lambda"), bounds)
    measured = Marginals({**tables.tables, pair_key(("kappa", "lambda")): pair,
                          **{f"pairbins:{name}": value for name, value in bounds.items()}})
    trainer = GANTrainer(TableEncoder(demo_schema, measured), TINY, rng=torch_generator(0, "t"))
    assert trainer.matcher is not None and len(trainer.matcher.pairs) == 1
    raw, cond = _encoded_batch(trainer, rows)
    shuffled = rows.assign(**{"lambda": rows["lambda"].sample(frac=1.0, random_state=3).to_numpy()})
    raw_shuffled, _ = _encoded_batch(trainer, shuffled)
    kept = float(trainer.matcher._pair_loss(raw, cond, None))
    broken = float(trainer.matcher._pair_loss(raw_shuffled, cond, None))
    assert kept < 0.2 * broken

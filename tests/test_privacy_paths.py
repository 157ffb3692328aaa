"""Privacy properties checked through the production path: the site, its trainer and ledger.

Each test here is aimed at one way the guarantee can break (noise, clipping, sampling,
normalisation, randomness reuse, charge order, refusals, error texts); `pytest -m mutation`
(tests/test_mutations.py) proves each fails when that part is broken.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, RecordDict

from fedsyn.client.app import make_client_app
from fedsyn.client.policy import SitePolicy
from fedsyn.client.site import Site, SiteRefusal
from fedsyn.data.demo import demo_schema_path
from fedsyn.federation import protocol
from fedsyn.model.config import GANConfig
from fedsyn.model.encoder import TableEncoder
from fedsyn.model.gan import DPTabularGAN
from fedsyn.model.training import GANTrainer
from fedsyn.privacy.accounting import (
    LedgerError,
    PrivacyEvent,
    PrivacyLedger,
    compute_epsilon,
    gaussian_noise_for_epsilon,
)
from fedsyn.privacy.budget import MARGINALS as GAUSSIAN_MARGINALS
from fedsyn.privacy.budget import MAX_NOISE_MULTIPLIER
from fedsyn.privacy.marginals import (
    RUN_NOISE,
    Marginals,
    exact_counts,
    marginals_sensitivity,
    measured_columns,
    numeric_runs,
    run_measured_columns,
    run_noise_cells,
    run_tables,
)
from fedsyn.privacy.postprocessing import run_sums
from fedsyn.privacy.randomness import mechanism_stream, torch_generator
from fedsyn.server.settings import FederationSettings
from fedsyn.simulations.run import prepare_sites

from .helpers import client_reply

TINY = GANConfig(latent_dim=8, generator_hidden=(16,), discriminator_hidden=(16,), batch_size=32, max_grad_norm=0.5)


def _site(tmp_path, frame, seed: int | None = 0, max_epsilon: float = 50.0, out_of_domain: str = "drop") -> Site:
    plan = prepare_sites([frame], demo_schema_path(), tmp_path / "sites", epsilon=max_epsilon, delta=1e-5, seed=seed,
                         out_of_domain=out_of_domain)
    return Site(SitePolicy.load(plan.policies[0]))


def _request(site: Site, round_: int = 1, **changes) -> protocol.TrainInstructions:
    fields = dict(round=round_, total_rounds=5, local_steps=3, sample_rate=0.2, epsilon=50.0, noise_multiplier=1.0,
                  gan_config=TINY, schema_sha256=protocol.schema_fingerprint(site.schema))
    return protocol.TrainInstructions(**{**fields, **changes})


def _global_model(site: Site, config: GANConfig = TINY) -> tuple[dict[str, np.ndarray], Marginals]:
    marginals = Marginals.uniform(site.schema)
    trainer = GANTrainer(TableEncoder(site.schema, marginals), config, rng=torch_generator(7, "global"))
    return dict(trainer.state_arrays()), marginals


def _trainer(demo_schema, seed: int = 0) -> GANTrainer:
    return GANTrainer(TableEncoder(demo_schema, Marginals.uniform(demo_schema)), TINY, rng=torch_generator(seed, "t"))


def _encoded(demo_schema, frame) -> torch.Tensor:
    return torch.as_tensor(TableEncoder(demo_schema, Marginals.uniform(demo_schema)).encode(frame))


# -- the DP-SGD step inside the trainer ------------------------------------------------------

def test_training_step_noise_has_the_accountants_std(demo_schema, demo_frame):
    """With no record in the batch the released gradient is pure noise: std sigma*C/B, B the
    public nominal batch size."""
    trainer, sigma = _trainer(demo_schema), 3.0
    empty = _encoded(demo_schema, demo_frame.head(0))
    draws = torch.cat([torch.cat([g.flatten() for g in trainer.real_gradient(empty, 0.5, sigma).values()])
                       for _ in range(10)])
    assert draws.std().item() == pytest.approx(sigma * TINY.max_grad_norm / TINY.batch_size, rel=0.05)


def _step_shift(demo_schema, rows: torch.Tensor, changed: torch.Tensor, noise_multiplier: float | None) -> float:
    """How far the step moves when ``rows`` become ``changed``: same stream, so same batch and noise."""
    steps = [_trainer(demo_schema, seed=3).real_gradient(data, 1.0, noise_multiplier,
                                                         mechanism_rng=mechanism_stream(3, "t"))
             for data in (rows, changed)]
    return torch.cat([(steps[0][k] - steps[1][k]).flatten() for k in steps[0]]).norm().item()


def test_one_record_moves_the_training_step_by_at_most_the_clip_norm(demo_schema, demo_frame):
    """Replacing one record by an extreme one moves the DP step by at most 2C/B. The extreme
    record is chosen so that, unclipped, it would move the step far more; fails when
    per-record clipping is off."""
    rows = _encoded(demo_schema, demo_frame.head(40))
    bound = 2 * TINY.max_grad_norm / TINY.batch_size
    directions = torch.randn((6, rows.shape[1]), generator=torch.Generator().manual_seed(0))
    candidates = []
    for direction in directions:  # some extreme records saturate the loss; keep the most influential
        changed = rows.clone()
        changed[5] = 1e3 * direction
        candidates.append((_step_shift(demo_schema, rows, changed, None), changed))
    unclipped, outlier = max(candidates, key=lambda candidate: candidate[0])
    assert unclipped > 20 * bound  # the check below could see a missing clip
    moved = _step_shift(demo_schema, rows, outlier, 0.7)
    assert 0 < moved <= bound + 1e-6


def test_training_step_uses_poisson_batches(demo_schema, demo_frame):
    """The batch the discriminator sees varies binomially, as the accountant assumes."""
    trainer = _trainer(demo_schema)
    data = _encoded(demo_schema, demo_frame.head(1000))
    sizes: list[int] = []
    handle = trainer.discriminator.register_forward_pre_hook(lambda _, args: sizes.append(args[0].shape[0]))
    try:
        for _ in range(200):
            trainer.real_gradient(data, 0.1, 1.0)
    finally:
        handle.remove()
    sizes_array = np.asarray(sizes, dtype=float)
    assert sizes_array.mean() == pytest.approx(100, rel=0.05)
    assert sizes_array.var() == pytest.approx(1000 * 0.1 * 0.9, rel=0.35)


def test_nothing_in_the_step_depends_on_the_row_count(demo_schema, demo_frame, monkeypatch):
    """The normaliser and the fake batch are public constants: 300 and 301 rows give the same."""
    import fedsyn.model.training as training

    seen: list[tuple[float, int]] = []
    real_private_gradient = training.private_gradient

    def spy(*args, **kwargs):
        seen.append((kwargs["expected_batch_size"], 0))
        return real_private_gradient(*args, **kwargs)

    monkeypatch.setattr(training, "private_gradient", spy)
    fake_sizes: list[int] = []
    for n in (300, 301):
        trainer = _trainer(demo_schema)
        original = trainer.conditions.sample
        trainer.conditions.sample = lambda k, g, column=None, _o=original: (fake_sizes.append(k), _o(k, g, column))[1]
        trainer.discriminator_step(_encoded(demo_schema, demo_frame.head(n)), 0.1, 1.0)
    assert [normaliser for normaliser, _ in seen] == [float(TINY.batch_size)] * 2
    assert fake_sizes == [TINY.batch_size] * 2


def test_the_losses_a_training_reply_reports_read_no_record(tmp_path, demo_schema, demo_frame, small_frame,
                                                            monkeypatch):
    """A training reply's ``discriminator_fake_loss`` is each step's fake-data term, computed
    before that step's private update reads a record: one step's, with and without an extreme
    extra record on the same streams, is the same number. A loss over the real rows would be a
    statistic of them without noise (helper-118 M2: adding one survived 215 tests). The site
    reports the steps' own losses and nothing else."""
    rows = _encoded(demo_schema, demo_frame.head(200))
    extreme = torch.cat([rows, torch.full((1, rows.shape[1]), 1e3)])
    fake_losses = []
    for data in (rows, extreme):
        history = _trainer(demo_schema, seed=3).train(data, 1, 0.5, 1.0, rng=torch_generator(3, "fake"),
                                                      mechanism_rng=mechanism_stream(3, "dp"))
        fake_losses.append(history[0].discriminator)
    assert fake_losses[0] == fake_losses[1]

    site = _site(tmp_path, small_frame)
    arrays, marginals = _global_model(site)
    histories = []
    real_train = GANTrainer.train

    def spy(self, *args, **kwargs):
        histories.append(real_train(self, *args, **kwargs))
        return histories[-1]

    monkeypatch.setattr(GANTrainer, "train", spy)
    _, metrics, _ = site.train(_request(site), arrays, marginals)
    assert set(metrics) == {"discriminator_fake_loss", "generator_loss", "steps"}
    assert metrics["discriminator_fake_loss"] == float(np.mean([step.discriminator for step in histories[0]]))
    assert metrics["generator_loss"] == float(np.mean([step.generator for step in histories[0]]))
    assert metrics["steps"] == len(histories[0])


# -- the site: randomness, charge order, refusals ------------------------------------------

def _mechanism_streams(site: Site, monkeypatch, rounds: int) -> list[np.random.Generator]:
    """The DP-SGD streams (Poisson samples, noise) ``site`` hands its trainer in ``rounds`` rounds."""
    arrays, marginals = _global_model(site)
    streams: list[np.random.Generator] = []
    real_train = GANTrainer.train

    def spy(self, *args, **kwargs):
        streams.append(kwargs["mechanism_rng"])
        return real_train(self, *args, **kwargs)

    monkeypatch.setattr(GANTrainer, "train", spy)
    for round_ in range(1, rounds + 1):
        site.train(_request(site, round_), arrays, marginals)
    monkeypatch.undo()
    return streams


def test_a_seeded_site_never_reuses_noise_or_batches(tmp_path, small_frame, monkeypatch):
    """Same seed, same model, same data: two rounds' DP streams and two marginals requests still differ."""
    site = _site(tmp_path, small_frame, seed=0)
    first, second = _mechanism_streams(site, monkeypatch, 2)
    assert first.bit_generator.state != second.bit_generator.state
    sigma = 30.0
    one, _ = site.release_marginals(sigma, 50.0, protocol.schema_fingerprint(site.schema))
    two, _ = site.release_marginals(sigma, 50.0, protocol.schema_fingerprint(site.schema))
    assert all(not np.allclose(one.counts[c], two.counts[c]) for c in one.counts)


def test_the_ledger_is_charged_before_any_mechanism_runs(tmp_path, small_frame, monkeypatch):
    import fedsyn.client.site as site_module

    site = _site(tmp_path, small_frame)
    seen: dict[str, list[str]] = {}
    real_train, real_marginals = GANTrainer.train, site_module.noisy_marginals

    def train_spy(self, *args, **kwargs):
        seen["train"] = [e.mechanism for e in PrivacyLedger.load(site.policy.ledger).events]
        return real_train(self, *args, **kwargs)

    def marginals_spy(*args, **kwargs):
        seen["marginals"] = [e.mechanism for e in PrivacyLedger.load(site.policy.ledger).events]
        return real_marginals(*args, **kwargs)

    monkeypatch.setattr(GANTrainer, "train", train_spy)
    monkeypatch.setattr(site_module, "noisy_marginals", marginals_spy)
    site.release_marginals(30.0, 50.0, protocol.schema_fingerprint(site.schema))
    arrays, marginals = _global_model(site)
    site.train(_request(site), arrays, marginals)
    assert seen == {"marginals": ["gaussian-marginals"], "train": ["gaussian-marginals", "dp-sgd"]}


def test_a_sites_training_round_draws_the_noise_and_runs_the_steps_its_ledger_charged(tmp_path, small_frame,
                                                                                       monkeypatch):
    """Every DP-SGD step a site's training round runs adds noise of the multiplier its ledger
    charged, at the request's clipping norm, and the round runs no more steps than charged:
    whether the coordinator names the noise or the site calibrates it (and raises it to its
    minimum). A site that trained at less noise than it charged, or for a step more, would
    release more than its ledger says (helper-110)."""
    from fedsyn.privacy import dp_sgd

    site = _site(tmp_path, small_frame)
    site.policy = site.policy.model_copy(update={"min_noise_multiplier": 1.7})
    arrays, marginals = _global_model(site)
    drawn: list[tuple[float, float]] = []
    real_privatize = dp_sgd.privatize

    def privatize_spy(summed, noise_multiplier, max_grad_norm, expected_batch_size, generator):
        drawn.append((noise_multiplier, max_grad_norm))
        return real_privatize(summed, noise_multiplier, max_grad_norm, expected_batch_size, generator)

    monkeypatch.setattr(dp_sgd, "privatize", privatize_spy)
    for round_, noise in ((1, 2.5), (2, None)):  # the coordinator's noise, then the site's own (below its minimum)
        drawn.clear()
        _, _, event = site.train(_request(site, round_=round_, noise_multiplier=noise), arrays, marginals)
        charged = PrivacyLedger.load(site.policy.ledger).events[-1]
        assert charged == event and charged.mechanism == "dp-sgd" and charged.steps == 3
        assert charged.noise_multiplier >= site.policy.min_noise_multiplier
        assert drawn == [(charged.noise_multiplier, TINY.max_grad_norm)] * charged.steps


def test_single_site_fit_charges_before_its_first_step(demo_schema, small_frame, monkeypatch):
    charged: list[str] = []
    seen_by_training: list[list[str]] = []
    real_charge, real_train = PrivacyLedger.charge, GANTrainer.train

    def charge_spy(self, event, budget):
        charged.append(event.mechanism)
        return real_charge(self, event, budget)

    def train_spy(self, *args, **kwargs):
        seen_by_training.append(list(charged))
        return real_train(self, *args, **kwargs)

    monkeypatch.setattr(PrivacyLedger, "charge", charge_spy)
    monkeypatch.setattr(GANTrainer, "train", train_spy)
    DPTabularGAN(demo_schema, epsilon=1.0, delta=1e-5, epochs=1, config=TINY, seed=0).fit(small_frame)
    assert seen_by_training == [["gaussian-marginals", "dp-sgd"]]


def test_marginals_noise_through_the_site_has_std_sigma_times_sensitivity(tmp_path, small_frame):
    """Ten releases (about 5,000 noisy cells, std error about 1 %): tight enough to tell a
    weight of 9 from 8 (:func:`tables_weight`), 6 % apart. A numeric column's runs are measured
    once more, at ``RUN_NOISE`` times a cell's noise, and folded into its bins before they leave
    (:func:`with_run_sums`): a run of ``k`` bins and ``D = k + RUN_NOISE²`` then carries ``(D -
    1) / D`` of a cell's noise variance in each bin and :func:`run_noise_cells` in its sum, where
    the runs' measurement without noise would leave the sum far less, and none would leave it
    ``k``."""
    site = _site(tmp_path, small_frame)
    sigma = 2.0
    exact = exact_counts(small_frame, site.schema)
    measured = measured_columns(site.schema)
    assert site.schema.outcome not in [c.name for c in measured]  # its counts are sums of the noisy tables
    folded = {column.name: numeric_runs(column) for column in run_measured_columns(site.schema)}
    assert folded and len(folded) < len(measured)
    cells, sums = [], []
    for _ in range(10):
        released, _ = site.release_marginals(sigma, 50.0, protocol.schema_fingerprint(site.schema))
        for column in measured:
            residual = released.tables[column.name] - exact.tables[column.name]
            if column.name not in folded:
                cells.append(residual.ravel())
                continue
            runs = folded[column.name]
            across = np.bincount(runs) + RUN_NOISE ** 2
            cells.append((residual / np.sqrt((across - 1.0) / across)[runs][:, None]).ravel())
            sums.append((run_sums(residual, runs) / np.sqrt(run_noise_cells(runs))[:, None]).ravel())
    std = sigma * marginals_sensitivity(site.schema)
    assert np.concatenate(cells).std() == pytest.approx(std, rel=0.04)
    assert np.concatenate(sums).std() == pytest.approx(std, rel=0.1)
    assert marginals_sensitivity(site.schema) == math.sqrt(len(measured) + len(folded) / RUN_NOISE ** 2)
    assert released.cell_std == pytest.approx(std)  # the noise it states


def test_each_table_of_runs_is_drawn_at_run_noise_times_the_cell_std(tmp_path, small_frame, monkeypatch):
    """Exactly: every table the site draws in round 0 (through the site, as a coordinator's
    query reaches it) has the noise the weight prices it at, a cell's std for each column's
    bins and ``RUN_NOISE`` times it for each table of runs, drawn from the exact counts. The
    statistical test above lets runs at up to 1.65 times their noise pass (helper-92)."""
    from fedsyn.privacy import marginals as marginals_module

    drawn: list[tuple[np.ndarray, float]] = []
    real = marginals_module.gaussian_counts

    def recording(exact: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
        drawn.append((np.array(exact), std))
        return real(exact, std, rng)

    monkeypatch.setattr(marginals_module, "gaussian_counts", recording)
    site = _site(tmp_path, small_frame)
    released, _ = site.release_marginals(2.0, 50.0, protocol.schema_fingerprint(site.schema))
    exact = exact_counts(small_frame, site.schema)
    expected = [(exact.tables[c.name], released.cell_std) for c in measured_columns(site.schema)]
    expected += [(table, RUN_NOISE * released.cell_std) for table in run_tables(exact, site.schema).values()]
    assert len(drawn) == len(expected) and len(expected) > len(measured_columns(site.schema))
    for (counts, std), (truth, claimed) in zip(drawn, expected):
        np.testing.assert_array_equal(counts, truth)
        assert std == pytest.approx(claimed, rel=1e-12)


def test_the_marginals_sensitivity_is_what_one_record_moves(small_frame, demo_schema):
    """Removing one record moves the measured tables (a numeric column's runs among them, scaled
    by the ``1 / RUN_NOISE`` of their noise) by exactly the claimed L2 sensitivity, and the
    outcome's own counts are not measured on their own (else it would be more)."""
    full, fewer = exact_counts(small_frame, demo_schema), exact_counts(small_frame.iloc[1:], demo_schema)
    moved = [full.tables[c.name] - fewer.tables[c.name] for c in measured_columns(demo_schema)]
    moved += [(table - run_tables(fewer, demo_schema)[name]) / RUN_NOISE  # measured at RUN_NOISE times the noise
              for name, table in run_tables(full, demo_schema).items()]
    assert math.sqrt(sum(float(np.sum(m ** 2)) for m in moved)) == pytest.approx(marginals_sensitivity(demo_schema))
    assert {c.name for c in measured_columns(demo_schema)} | {demo_schema.outcome} == set(demo_schema.column_names)


def _refused_now(site: Site, call) -> SiteRefusal:
    """The refusal ``call`` raises, having charged nothing more."""
    charged = len(PrivacyLedger.load(site.policy.ledger).events)
    with pytest.raises(SiteRefusal) as caught:
        call()
    assert len(PrivacyLedger.load(site.policy.ledger).events) == charged
    return caught.value


def _refusal(site: Site, call) -> SiteRefusal:
    with pytest.raises(SiteRefusal) as caught:
        call()
    assert PrivacyLedger.load(site.policy.ledger).events == []  # a refusal costs nothing
    return caught.value


def test_a_deleted_extract_is_named_as_missing_in_the_sites_own_log(tmp_path, small_frame, caplog):
    """helper-98: the site's log said only 'DataFileError' for an extract that had been deleted;
    the coordinator still hears the fixed data_invalid text."""
    site = _site(tmp_path, small_frame)
    arrays, marginals = _global_model(site)
    site.policy.data.unlink()
    refusal = _refusal(site, lambda: site.train(_request(site), arrays, marginals))
    assert refusal.code is protocol.ErrorCode.DATA_INVALID and str(site.policy.data) not in refusal.public_reason
    assert f"the extract {site.policy.data} does not exist" in caplog.text


def test_refusals_charge_nothing_and_say_nothing_private(tmp_path, small_frame):
    bad = small_frame.copy()
    bad.loc[7, "kappa"] = 31337.25  # outside the public bounds
    site = _site(tmp_path, bad, out_of_domain="refuse")
    arrays, marginals = _global_model(site)
    refusal = _refusal(site, lambda: site.train(_request(site), arrays, marginals))
    assert refusal.code is protocol.ErrorCode.DATA_INVALID
    for secret in ("31337", "line", str(len(bad)), str(site.policy.data)):
        assert secret not in refusal.public_reason

    site = _site(tmp_path / "ok", small_frame)
    arrays, marginals = _global_model(site)
    assert _refusal(site, lambda: site.train(_request(site, schema_sha256="f" * 64), arrays, marginals)).code \
        is protocol.ErrorCode.SCHEMA_MISMATCH
    wrong_shape = {**arrays, "generator.head.bias": np.zeros(3, dtype=np.float32)}
    assert _refusal(site, lambda: site.train(_request(site), wrong_shape, marginals)).code \
        is protocol.ErrorCode.MALFORMED_REQUEST
    assert _refusal(site, lambda: site.train(_request(site, epsilon=60.0), arrays, marginals)).code \
        is protocol.ErrorCode.BUDGET_EXHAUSTED


def test_refusals_that_need_no_rows_read_none(tmp_path, small_frame, monkeypatch):
    """Regression for the third review's F2: an over-budget query read (and validated) the
    extract before refusing, so a coordinator timing free refusals learnt the row count (9 ms
    at 250 rows, 203 ms at 64,000). Refusals that do not depend on the rows now read none."""
    site = _site(tmp_path, small_frame)
    arrays, marginals = _global_model(site)
    monkeypatch.setattr(Site, "load_data", lambda self: pytest.fail("the extract was read before refusing"))
    fingerprint = protocol.schema_fingerprint(site.schema)
    assert _refusal(site, lambda: site.release_marginals(0.01, 50.0, fingerprint)).code \
        is protocol.ErrorCode.BUDGET_EXHAUSTED
    pairs = protocol.PairTablesQuery(0.01, 50.0, fingerprint, (("sex", "mgus"),), {})
    assert _refusal(site, lambda: site.release_pair_tables(pairs)).code is protocol.ErrorCode.BUDGET_EXHAUSTED
    wrong_shape = {**arrays, "generator.head.bias": np.zeros(3, dtype=np.float32)}
    assert _refusal(site, lambda: site.train(_request(site), wrong_shape, marginals)).code \
        is protocol.ErrorCode.MALFORMED_REQUEST
    assert _refusal(site, lambda: site.train(_request(site, epsilon=1e-4), arrays, marginals)).code \
        is protocol.ErrorCode.BUDGET_EXHAUSTED
    # The fourth review's F1: summed tables one bin short passed every check, then failed while
    # the rows were encoded, as a free 'site failure' whose time grew with the rows.
    short = Marginals({**marginals.tables, "kappa": marginals.tables["kappa"][:-1]})
    assert _refusal(site, lambda: site.train(_request(site), arrays, short)).code \
        is protocol.ErrorCode.MALFORMED_REQUEST
    infinite = Marginals({**marginals.tables, "kappa": np.full_like(marginals.tables["kappa"], np.inf)})
    assert _refusal(site, lambda: site.train(_request(site), arrays, infinite)).code \
        is protocol.ErrorCode.MALFORMED_REQUEST


def test_a_noise_multiplier_beyond_the_cap_is_refused_as_malformed_before_any_charge(tmp_path, small_frame,
                                                                                       monkeypatch):
    """helper-94 F1: round 0 at a noise multiplier of about 1e16 charged the site, then failed in
    its own post-processing (no simplex threshold left in float64), and at 1e308 the accountant
    overflowed: a coordinator could make a site pay and send nothing. Every request's multiplier
    is now at most MAX_NOISE_MULTIPLIER, checked before the extract is read or a charge is made;
    the cap itself is still answered."""
    site = _site(tmp_path, small_frame)
    fingerprint = protocol.schema_fingerprint(site.schema)
    read = Site.load_data
    monkeypatch.setattr(Site, "load_data", lambda self: pytest.fail("the extract was read before refusing"))
    for noise in (MAX_NOISE_MULTIPLIER * 10, 1e16, 1e308):
        assert _refusal(site, lambda noise=noise: site.release_marginals(noise, 50.0, fingerprint, pairs_share=0.4,
                                                                          sites=3)).code \
            is protocol.ErrorCode.MALFORMED_REQUEST
        with pytest.raises(protocol.ReplyError):
            protocol.PairTablesQuery(noise, 50.0, fingerprint, (("sex", "mgus"),), {})
        with pytest.raises(protocol.ReplyError):
            _request(site, noise_multiplier=noise)
    assert PrivacyLedger.load(site.policy.ledger).events == []
    monkeypatch.setattr(Site, "load_data", read)
    site.release_marginals(MAX_NOISE_MULTIPLIER, 50.0, fingerprint, pairs_share=0.4, sites=3)
    assert len(PrivacyLedger.load(site.policy.ledger).events) == 1


def test_a_site_lets_no_single_request_spend_more_than_its_policy_allows(tmp_path, small_frame, monkeypatch):
    """The fifth review's F6: min_noise_multiplier bounds DP-SGD only, so a coordinator could put
    a site's whole budget into one round-0 release at little noise. With max_epsilon_per_request
    every request (round 0's tables, pair tables, a training round) is refused, before any row
    is read and at no cost, when it alone would add more than that to the site's epsilon."""
    site = _site(tmp_path, small_frame)
    site.policy = site.policy.model_copy(update={"max_epsilon_per_request": 0.5})
    arrays, marginals = _global_model(site)
    monkeypatch.setattr(Site, "load_data", lambda self: pytest.fail("the extract was read before refusing"))
    fingerprint = protocol.schema_fingerprint(site.schema)
    for call in (lambda: site.release_marginals(0.5, 50.0, fingerprint),
                 lambda: site.release_pair_tables(protocol.PairTablesQuery(0.5, 50.0, fingerprint, (("sex", "mgus"),),
                                                                           {})),
                 lambda: site.train(_request(site, noise_multiplier=0.6, local_steps=50), arrays, marginals)):
        refusal = _refusal(site, call)
        assert refusal.code is protocol.ErrorCode.POLICY_REFUSED and "0.5 this site lets one request spend" \
            in refusal.public_reason
    monkeypatch.undo()
    site.release_marginals(20.0, 50.0, fingerprint)  # a request at enough noise passes
    spent = PrivacyLedger.load(site.policy.ledger).events
    assert len(spent) == 1 and site.ledger.epsilon() <= 0.5
    # The review of the change: composed, a later request adds less than it costs alone, so the cap
    # is on its own cost. After ten cheap charges, one that adds under 0.5 but costs more is refused.
    for _ in range(10):
        site.release_marginals(8.0, 50.0, fingerprint)
    before = site.ledger.epsilon()
    costly = compute_epsilon([PrivacyEvent(GAUSSIAN_MARGINALS, 3.5, 1.0, 1)], 1e-5)
    assert costly > 0.5 and site.ledger.epsilon([PrivacyEvent(GAUSSIAN_MARGINALS, 3.5, 1.0, 1)]) - before < 0.5
    assert "on its own" in _refused_now(site, lambda: site.release_marginals(3.5, 50.0, fingerprint)).public_reason
    # The site's own noise, where the coordinator leaves it to the site, keeps within its cap
    site.train(_request(site, noise_multiplier=None, epsilon=20.0, local_steps=5, total_rounds=1), arrays, marginals)
    assert compute_epsilon([PrivacyLedger.load(site.policy.ledger).events[-1]], 1e-5) <= 0.5


def test_a_sites_replies_leave_on_its_time_quantum(tmp_path, small_frame):
    """The fourth review's F2: a round-0 request at noise 1e5 costs almost nothing and still took
    longer the more rows the site holds (22 ms at 2,000 rows, 312 ms at 64,000). A hospital's
    replies leave at whole multiples of its policy's quantum (1 s by default) after the request
    came, charged or refused; a simulation's own sites keep none. So does the time Flower stamps on
    a reply when it is made (its created_at, and its ttl, which reach the coordinator): the fifth
    review's F1 read the rows off them, the reply having been made before the hold."""
    site = _site(tmp_path, small_frame)
    assert site.policy.reply_quantum_seconds == 0 and SitePolicy.model_fields["reply_quantum_seconds"].default == 1.0
    policy = tmp_path / "sites" / "site-0" / "policy.json"
    site.policy.model_copy(update={"reply_quantum_seconds": 0.4}).save(policy)
    fingerprint = protocol.schema_fingerprint(site.schema)
    for noise, epsilon in ((1e5, 50.0), (0.01, 50.0)):  # charged almost nothing; refused for its budget
        config = ConfigRecord({"noise_multiplier": noise, "epsilon": epsilon, protocol.SCHEMA_HASH: fingerprint})
        started, asked = time.monotonic(), time.time()
        reply = client_reply(policy, RecordDict({protocol.CONFIG: config}), protocol.QUERY_MARGINALS)
        elapsed, stamped = time.monotonic() - started, reply.metadata.created_at - asked
        for seconds in (elapsed, stamped):
            assert seconds >= 0.4 and min(seconds % 0.4, 0.4 - seconds % 0.4) < 0.1, (elapsed, stamped)


def test_a_reply_longer_than_its_quantum_is_said_to_the_sites_operator_once(monkeypatch, caplog, tmp_path):
    """The ninth review's F1: where a request's work spans quanta, a coordinator that varies it
    finds where the reply crosses into the next quantum, and that point moves with the rows
    read. The quantum hides the rows only above the longest reply: the site's log says so, once
    per quantum setting, though each reply runs in a process of its own (helper-98: said once
    per process, it was said on every reply)."""
    import logging

    from fedsyn.client import app

    slept = []
    monkeypatch.setattr(app.time, "sleep", slept.append)
    with caplog.at_level(logging.WARNING, logger="fedsyn.client"):
        app._hold_to_quantum(time.monotonic() - 0.05, 0.4, tmp_path)  # within one quantum: nothing to say
        assert not caplog.records
        app._hold_to_quantum(time.monotonic() - 0.9, 0.4, tmp_path)
        app._hold_to_quantum(time.monotonic() - 0.9, 0.4, tmp_path)  # as a later reply's process would
        assert len(caplog.records) == 1 and "longer than one quantum" in caplog.records[0].getMessage()
        app._hold_to_quantum(time.monotonic() - 0.9, 0.5, tmp_path)  # a new setting, still too short: said
    assert len(caplog.records) == 2 and "(reply_quantum_seconds 0.5)" in caplog.records[1].getMessage()
    assert 1.15 < slept[1] + 0.9 < 1.25  # still held to the next quantum
    (tmp_path / app.OUTLASTED_QUANTUM).write_bytes(b"\xff\xfe")  # helper-103 M2: it raised, and skipped the hold
    app._hold_to_quantum(time.monotonic() - 0.9, 0.4, tmp_path)
    assert 1.15 < slept[-1] + 0.9 < 1.25


def test_a_refusal_asked_again_adds_no_line_to_the_sites_trail(tmp_path, small_frame):
    """The third review's side note: every refusal appended a line, so a coordinator could grow
    a site's trail without limit, for free."""
    site = _site(tmp_path, small_frame)
    policy = tmp_path / "sites" / "site-0" / "policy.json"
    for noise in (0.01, 0.011, 0.012):  # numbers the coordinator chooses, in the refusal's text
        config = ConfigRecord({"noise_multiplier": noise, "epsilon": 50.0,
                               protocol.SCHEMA_HASH: protocol.schema_fingerprint(site.schema)})
        reply = client_reply(policy, RecordDict({protocol.CONFIG: config}), protocol.QUERY_MARGINALS)
        assert reply.has_error() and reply.error.code == protocol.ErrorCode.BUDGET_EXHAUSTED
    lines = site.policy.audit_trail.read_text().splitlines()
    assert sum(json.loads(line)["event"] == "request_refused" for line in lines) == 1


def test_a_coordinators_own_text_in_a_refusal_is_one_bounded_line_and_never_grows_the_trail(tmp_path, small_frame,
                                                                                              caplog):
    """helper-88's F1 and F2: a refusal quoted the coordinator's transport dtype whole. Varied a
    megabyte a request, it grew the site's trail and log by as much, charging nothing (the
    reviewer filled a site's disk to read its extract's size off the free-space refusal), and
    a newline in it forged a line of the site's log."""
    site = _site(tmp_path, small_frame)
    policy = tmp_path / "sites" / "site-0" / "policy.json"
    before = site.policy.audit_trail.stat().st_size
    forged = "\n2026-12-06T18:00:00.000+00:00 INFO    fedsyn.client: privacy charged: epsilon now 0.0001"
    with caplog.at_level(logging.WARNING, logger="fedsyn"):
        for junk in ("x" * 1_000_000, "y" * 1_000_000 + forged, "\x1b[2K\x1b[1A" * 1_000):
            config = _request(site).to_record()
            config["transport_dtype"] = junk
            reply = client_reply(policy, RecordDict({protocol.CONFIG: config}), "train")
            assert reply.has_error() and reply.error.code == protocol.ErrorCode.MALFORMED_REQUEST
            assert len(reply.error.reason) <= 420 and reply.error.reason.isprintable()
    assert site.policy.audit_trail.stat().st_size - before < 2_000  # one line, for the first refusal only
    assert len(caplog.text) < 5_000 and "\x1b" not in caplog.text
    assert not any(line.lstrip().startswith("2026-12-06T18:00") for line in caplog.text.splitlines())
    assert PrivacyLedger.load(site.policy.ledger).events == []


def test_site_refuses_a_delta_not_below_one_over_n(tmp_path, small_frame):
    site = _site(tmp_path, small_frame.head(50))
    site.policy = site.policy.model_copy(update={"delta": 0.05})
    site.ledger.delta = 0.05
    assert _refusal(site, lambda: site.release_marginals(30.0, 50.0, protocol.schema_fingerprint(site.schema))).code \
        is protocol.ErrorCode.POLICY_REFUSED


def test_error_replies_carry_a_code_and_public_text_only(tmp_path, small_frame):
    bad = small_frame.copy()
    bad.loc[3, "creatinine"] = 27182.5
    plan = prepare_sites([bad], demo_schema_path(), tmp_path / "sites", epsilon=1.0, delta=1e-5,
                         out_of_domain="refuse")
    config = ConfigRecord({"noise_multiplier": 5.0, "epsilon": 1.0,
                           protocol.SCHEMA_HASH: protocol.schema_fingerprint(Site(SitePolicy.load(
                               plan.policies[0])).schema)})
    reply = client_reply(plan.policies[0], RecordDict({protocol.CONFIG: config}), protocol.QUERY_MARGINALS)
    assert reply.has_error() and reply.error.code == protocol.ErrorCode.DATA_INVALID
    assert reply.error.reason.startswith("data_invalid: ")
    for secret in ("27182", str(len(bad)), "sites/site-0", "line"):
        assert secret not in reply.error.reason
    assert PrivacyLedger.load(SitePolicy.load(plan.policies[0]).ledger).events == []


# -- the ledger at the site ----------------------------------------------------------------

def test_a_deleted_or_reset_ledger_is_refused(tmp_path, small_frame):
    site = _site(tmp_path, small_frame)
    site.release_marginals(30.0, 50.0, protocol.schema_fingerprint(site.schema))
    ledger_path = site.policy.ledger
    saved = ledger_path.read_text()
    ledger_path.unlink()
    with pytest.raises(LedgerError, match="no privacy ledger"):
        Site(site.policy)
    PrivacyLedger.create(ledger_path, site.policy.delta, protects=str(site.policy.data.resolve()))  # behind our back
    with pytest.raises(LedgerError, match="audit trail .* records 1 charges"):
        Site(site.policy)
    ledger_path.write_text(saved)
    Site(site.policy)  # restored from backup: accepted again


def test_two_charges_that_read_the_same_ledger_are_both_counted_from_the_trail(tmp_path, small_frame):
    """helper-101 L1's second half: two charges that read the same ledger (its lock deleted under
    them) both record the same ledger size in the trail; the trail's count of charges still
    says one was lost, and the site spends nothing until its ledger holds both."""
    import json

    site = _site(tmp_path, small_frame)
    site.release_marginals(30.0, 50.0, protocol.schema_fingerprint(site.schema))
    trail = site.policy.audit_trail
    charged = next(line for line in trail.read_text().splitlines() if json.loads(line)["event"] == "privacy_charged")
    site.trail.append("privacy_charged", **{k: v for k, v in json.loads(charged).items()
                                            if k in ("privacy", "ledger_events", "epsilon_spent")})
    with pytest.raises(LedgerError, match="audit trail .* records 2 charges"):
        Site(site.policy)


@pytest.mark.parametrize("last_charge", ["marginals of run-b", "marginals naming no run", "a round naming no run"])
def test_a_ledger_and_trail_restored_from_an_older_backup_are_refused(tmp_path, small_frame, last_charge):
    """The fourth review's F4: restored together from a backup taken before the last charge, the
    ledger and its trail agreed, so the site spent on with that charge forgotten (1.71 shown where
    both releases were spent) and, seeded, drew the same noise again at the same ledger position:
    the two releases gave back an exact table. The stored answers prove the later charge, also
    when the coordinator named no run (fifth review: nothing was stored then)."""
    site = _site(tmp_path, small_frame)
    fingerprint = protocol.schema_fingerprint(site.schema)
    site.release_marginals(30.0, 50.0, fingerprint, run_id="run-a")
    ledger, trail = site.policy.ledger, site.policy.audit_trail
    backup = {path: path.read_text() for path in (ledger, trail)}
    if last_charge == "a round naming no run":
        arrays, marginals = _global_model(site)
        site.train(_request(site, run_id=""), arrays, marginals)
    else:
        site.release_marginals(20.0, 50.0, fingerprint, run_id="run-b" if "run-b" in last_charge else "")
    Site(site.policy)  # as it is: accepted
    for path, text in backup.items():
        path.write_text(text)
    with pytest.raises(LedgerError, match="stored answers .* prove 2 charges"):
        Site(site.policy)


def test_two_sites_on_one_policy_share_one_budget(tmp_path, small_frame):
    """Two runs at once against one policy (Flower starts one process per run)."""
    first = _site(tmp_path, small_frame, max_epsilon=1.0)
    second = Site(first.policy)
    fingerprint = protocol.schema_fingerprint(first.schema)
    sigma = gaussian_noise_for_epsilon(0.8, 1e-5)  # room for one such release, not two
    first.release_marginals(sigma, 1.0, fingerprint)
    with pytest.raises(SiteRefusal) as refused:
        second.release_marginals(sigma, 1.0, fingerprint)
    assert refused.value.code is protocol.ErrorCode.BUDGET_EXHAUSTED
    assert PrivacyLedger.load(first.policy.ledger).epsilon() <= 1.0


# -- settings refused before anything is spent ----------------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"aggregation": "foo"}, "aggregation 'foo'"),
    ({"transport_dtype": "float8"}, "transport_dtype"),
    ({"epsilon": float("nan")}, "epsilon"),
    ({"delta": 1.5}, "delta"),
    ({"site_noise_multiplier": 1.0, "aggregation": "median"}, "calibrated for mean"),
    ({"table_steps": -1}, "table_steps"),
    ({"table_steps": 10, "gan_config": GANConfig(matching_weight=0.0)}, "matching_weight = 0 switches off"),
])
def test_invalid_federation_settings_are_refused_at_construction(change, message):
    with pytest.raises(ValueError, match=message):
        FederationSettings(**change)


def test_privacy_report_states_each_sites_own_delta(tmp_path, demo_frame, demo_schema):
    from fedsyn.client.site import initialise_ledger
    from fedsyn.model.checkpoint import load_checkpoint
    from fedsyn.server.app import ReleasePlan, run_federation
    from fedsyn.simulations.inprocess import InProcessGrid

    tables = [demo_frame.iloc[:300], demo_frame.iloc[300:600]]
    plan = prepare_sites(tables, demo_schema_path(), tmp_path / "sites", epsilon=1.0, delta=1e-5)
    stricter = SitePolicy.load(plan.policies[1])
    stricter.ledger.unlink()
    stricter.audit_trail.unlink()
    stricter = stricter.model_copy(update={"delta": 1e-7})
    stricter.save(plan.policies[1])
    initialise_ledger(SitePolicy.load(plan.policies[1]))
    settings = FederationSettings(rounds=1, local_steps=2, sample_rate=0.2, epsilon=1.0, delta=1e-5,
                                  gan_config=TINY, seed=0, min_sites=2)  # each site's round 0 at its own delta
    grid = InProcessGrid(make_client_app(plan.site_policy), 2)
    run_federation(grid, demo_schema, settings, ReleasePlan(tmp_path / "release", rows=50))
    report = json.loads((tmp_path / "release" / "privacy_report.json").read_text())
    deltas = sorted(site["delta"] for site in report["sites"])
    assert deltas == [1e-7, 1e-5]
    for site, policy in zip(sorted(report["sites"], key=lambda s: s["site"]), plan.policies):
        ledger = PrivacyLedger.load(SitePolicy.load(policy).ledger)
        assert site["epsilon_this_run"] == pytest.approx(ledger.epsilon(), rel=1e-6)
    # The headline figures are the weakest guarantee of any site: the larger epsilon (the stricter
    # delta's site here) and the larger delta, in the report and in the model file (helper-110).
    cumulative = [site["epsilon_cumulative"] for site in report["sites"]]
    assert min(cumulative) < max(cumulative) == report["max_epsilon_any_site"]
    stored = load_checkpoint(tmp_path / "release" / "generator.pt").privacy
    assert stored["max_epsilon_any_site"] == max(cumulative) and stored["delta"] == 1e-5


def test_a_site_normalises_by_its_noisy_count_never_its_row_count(tmp_path, small_frame, monkeypatch):
    """With its own noisy marginals among the slots' tables, the site's expected batch comes
    from that DP release (post-processing), not from ``len(extract)``."""
    site = _site(tmp_path, small_frame)
    one_slot = replace(TINY, site_slots=1)
    marginals = Marginals.uniform(site.schema)
    arrays = dict(GANTrainer(TableEncoder(site.schema, marginals), one_slot,
                             rng=torch_generator(7, "global")).state_arrays())
    own = Marginals({name: table * 0 + 1000.0 / table.size for name, table in marginals.tables.items()})
    seen: list[float | None] = []
    real_train = GANTrainer.train

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("expected_batch"))
        return real_train(self, *args, **kwargs)

    monkeypatch.setattr(GANTrainer, "train", spy)
    site.train(_request(site, gan_config=one_slot, site_slot=0), arrays, marginals, [own])
    assert seen == [pytest.approx(0.2 * 1000.0)] and len(small_frame) != 1000


def test_a_slots_non_finite_or_overflowing_tables_are_refused_before_any_row_or_charge(tmp_path, small_frame,
                                                                                       monkeypatch):
    """The slots' tables come with every training request and steer the generated rows: one
    slot's table of NaN, inf or 1e308 (finite, and overflowing once summed) is malformed, refused
    before a row is read or anything is charged, as the summed tables are (helper-110). Taken, the
    round was charged and its update withheld, or trained on rows drawn from garbage."""
    site = _site(tmp_path, small_frame)
    one_slot = replace(TINY, site_slots=1)
    marginals = Marginals.uniform(site.schema)
    arrays = dict(GANTrainer(TableEncoder(site.schema, marginals), one_slot,
                             rng=torch_generator(7, "global")).state_arrays())
    read = Site.load_data
    monkeypatch.setattr(Site, "load_data", lambda self: pytest.fail("the extract was read before refusing"))
    for value in (np.nan, np.inf, 1e308):
        hostile = Marginals({name: np.full_like(table, value) for name, table in marginals.tables.items()})
        refusal = _refusal(site, lambda slot=hostile: site.train(_request(site, gan_config=one_slot, site_slot=0),
                                                                 arrays, marginals, [slot]))
        assert refusal.code is protocol.ErrorCode.MALFORMED_REQUEST
    assert PrivacyLedger.load(site.policy.ledger).events == []
    monkeypatch.setattr(Site, "load_data", read)
    site.train(_request(site, gan_config=one_slot, site_slot=0), arrays, marginals, [marginals])  # well-formed: taken


def test_a_coordinator_binning_numbers_differently_is_refused_before_any_charge(tmp_path, small_frame, monkeypatch):
    """The numeric grid's version is part of the schema fingerprint: a coordinator on another
    fedsyn grid (its tables would have other shapes) is refused at round 0 before the site pays."""
    site = _site(tmp_path, small_frame)
    monkeypatch.setattr(protocol, "GRID_VERSION", "fedsyn-grid/1")
    other_grid = protocol.schema_fingerprint(site.schema)
    monkeypatch.undo()
    assert other_grid != protocol.schema_fingerprint(site.schema)
    assert _refusal(site, lambda: site.release_marginals(30.0, 50.0, other_grid)).code \
        is protocol.ErrorCode.SCHEMA_MISMATCH


def test_a_sites_dp_sgd_noise_has_128_bits_of_entropy(tmp_path, small_frame, monkeypatch):
    """An unseeded site's Poisson samples and noise come from a NumPy stream on 128 bits of fresh
    entropy, a new one per charged round. PyTorch's CPU generator keeps 32 bits of its seed: a
    coordinator that tried the 2^32 seeds against a reply could subtract the noise and read a
    record back (found by the third privacy review)."""
    streams = _mechanism_streams(_site(tmp_path, small_frame, seed=None), monkeypatch, 2)
    entropy = [stream.bit_generator.seed_seq.entropy for stream in streams]
    assert all(value.bit_length() > 96 for value in entropy) and entropy[0] != entropy[1]


def test_a_padded_samples_empty_slots_contribute_nothing(demo_schema, demo_frame):
    """Empty slots sampled from a padded extract go through the step and add exactly 0: the same
    streams give the same step whatever the slots hold (here zeros, then extreme values that
    would move the step if they counted)."""
    rows = _encoded(demo_schema, demo_frame.head(40))
    steps = []
    for filler in (0.0, 1e3):
        data = torch.cat([rows, torch.full((60, rows.shape[1]), filler)])
        steps.append(_trainer(demo_schema, seed=3).real_gradient(data, 0.5, 0.7, mechanism_rng=mechanism_stream(3, "t"),
                                                                 real_rows=40))
    assert all(torch.equal(steps[0][k], steps[1][k]) for k in steps[0])


def test_with_max_rows_a_rounds_work_does_not_depend_on_the_row_count(tmp_path, small_frame, monkeypatch):
    """The fifth review timed training rounds (3-4 s at 1,000 rows, 10 s at 4,000) to learn a
    site's size. With the policy's public ``max_rows`` every step samples over that many slots:
    the batches the discriminator computes have the same size whatever the extract holds, while
    records still join at the sample rate."""
    import fedsyn.model.training as training

    batches: dict[int, list[tuple[int, int]]] = {}
    real_private_gradient = training.private_gradient
    for rows in (60, 180):
        site = _site(tmp_path / str(rows), small_frame.head(rows))
        site = Site(site.policy.model_copy(update={"max_rows": 1000}))
        arrays, marginals = _global_model(site)
        seen = batches.setdefault(rows, [])

        def spy(module, loss, inputs, *, present, _seen=seen, **kwargs):
            _seen.append((inputs[0].shape[0], int(present.sum())))
            return real_private_gradient(module, loss, inputs, present=present, **kwargs)

        monkeypatch.setattr(training, "private_gradient", spy)
        site.train(_request(site, local_steps=40), arrays, marginals)
    for rows, seen in batches.items():
        sizes, records = np.asarray(seen, dtype=float).T
        assert sizes.mean() == pytest.approx(0.2 * 1000, rel=0.06)
        assert records.mean() == pytest.approx(0.2 * rows, rel=0.3)


def test_the_pytorch_stream_never_counts_the_poisson_batch(demo_schema, demo_frame):
    """Each sampled record's condition column was drawn from the training round's PyTorch stream,
    which keeps 32 bits of its seed: whoever found the seed read each step's batch size off the
    draws that followed (review of the fifth review's fix). Extracts one record apart leave the
    PyTorch stream in the same state; only the mechanism's stream sees the batch."""
    states = []
    for rows in (300, 301):
        trainer, stream = _trainer(demo_schema), torch_generator(5, "round")
        trainer.train(_encoded(demo_schema, demo_frame.head(rows)), 3, 0.3, 1.0, rng=stream,
                      mechanism_rng=mechanism_stream(5, "round"))
        states.append(stream.get_state())
    assert torch.equal(states[0], states[1])


def test_a_site_whose_audit_trail_cannot_be_written_charges_nothing(tmp_path, small_frame):
    """helper-108 M3: with the trail made immutable mid-run, the ledger was saved with a charge and
    the trail's append then failed, so the trail held one charge fewer than the ledger, silently.
    The trail is opened for appending before anything is charged or read."""
    site = _site(tmp_path, small_frame)
    arrays, marginals = _global_model(site)
    trail = site.policy.audit_trail
    entries = trail.read_text()
    trail.unlink()
    trail.mkdir()  # a trail this process cannot append to, as root too
    for call in (lambda: site.release_marginals(20.0, 50.0, protocol.schema_fingerprint(site.schema)),
                 lambda: site.train(_request(site), arrays, marginals)):
        with pytest.raises(OSError):
            call()
        assert PrivacyLedger.load(site.policy.ledger).events == []
    trail.rmdir()
    trail.write_text(entries)
    site.release_marginals(20.0, 50.0, protocol.schema_fingerprint(site.schema))
    assert len(PrivacyLedger.load(site.policy.ledger).events) == 1


def test_a_site_short_of_its_disk_reserve_refuses_uncharged_at_a_fixed_threshold(tmp_path, small_frame, monkeypatch):
    """Charged first, a full disk lost the stored answer, and the round asked again after a
    restart was charged again. Below the policy's disk reserve, round 0 and a training round
    are refused before anything is charged or read, as ``no_room``; at the reserve, both are
    answered. The threshold is the reserve whatever the request: helper-82 padded the global
    model with arrays the networks ignore to move a threshold set by the answer's size, and
    read free disk (which moves with the extract's bytes) to 8 bytes by binary search. Padding
    is now refused as malformed, and an answer too large for the reserve is a policy refusal."""
    import shutil

    from fedsyn.client import site as site_module

    site = _site(tmp_path, small_frame)
    site = Site(site.policy.model_copy(update={"disk_reserve_mib": 4}))  # a padding to move it stays small
    arrays, marginals = _global_model(site)
    reserve = site.policy.disk_reserve_mib * 2**20
    free = {"bytes": reserve - 1}
    real_usage = shutil.disk_usage
    monkeypatch.setattr(site_module.shutil, "disk_usage",
                        lambda path: real_usage(path)._replace(free=free["bytes"]))
    with monkeypatch.context() as reading:
        reading.setattr(Site, "load_data", lambda self: pytest.fail("the extract was read before refusing"))
        for call in (lambda: site.release_marginals(20.0, 50.0, protocol.schema_fingerprint(site.schema)),
                     lambda: site.train(_request(site), arrays, marginals)):
            refusal = _refusal(site, call)
            assert refusal.code is protocol.ErrorCode.NO_ROOM and "free disk" in refusal.public_reason
            assert refusal.code not in protocol.FINAL_CODES  # the run asks again once space is freed
            assert not protocol.possibly_charged(refusal.code)  # and the release's epsilon stays exact
        padded = {**arrays, "padding": np.zeros(reserve // 4, dtype=np.float32)}  # would have moved the threshold
        assert _refusal(site, lambda: site.train(_request(site), padded, marginals)).code \
            is protocol.ErrorCode.MALFORMED_REQUEST
        free["bytes"] = reserve
        widest = replace(TINY, latent_dim=1024, generator_hidden=(1024,) * 4, discriminator_hidden=(1024,) * 4)
        refusal = _refusal(site, lambda: site.train(_request(site, gan_config=widest),
                                                    _global_model(site, widest)[0], marginals))
        assert refusal.code is protocol.ErrorCode.POLICY_REFUSED and "disk_reserve_mib" in refusal.public_reason
    site.release_marginals(20.0, 50.0, protocol.schema_fingerprint(site.schema))
    site.train(_request(site), arrays, marginals)
    assert len(PrivacyLedger.load(site.policy.ledger).events) == 2
    # The stored answers count as free: their sizes are the coordinator's to choose, and filling
    # the store by chosen amounts moved the threshold as a padded model had (helper-85).
    stored = site.replies.stored_bytes()
    free["bytes"] = reserve - stored
    site.train(_request(site, round_=2), arrays, marginals)
    free["bytes"] = reserve - site.replies.stored_bytes() - 1
    with pytest.raises(SiteRefusal) as caught:
        site.train(_request(site, round_=3), arrays, marginals)
    assert caught.value.code is protocol.ErrorCode.NO_ROOM and len(PrivacyLedger.load(site.policy.ledger).events) == 3


def test_released_counts_lie_on_a_grid_of_their_noise_not_on_raw_floating_point_sums(tmp_path, small_frame):
    """A float64 count-plus-noise keeps low bits that depend on the exact count (helper-90 F5).
    Every measured column's released table lies on the grid of std / 1024: the bits are gone,
    and the grid is a thousandth of the noise."""
    site = _site(tmp_path, small_frame)
    released, _ = site.release_marginals(20.0, 50.0, protocol.schema_fingerprint(site.schema))
    step = released.cell_std / 1024  # std / 1024 as said, not the constant: a finer grid keeps the low bits
    for column in measured_columns(site.schema):
        steps = released.tables[column.name] / step
        assert np.abs(steps - np.round(steps)).max() < 1e-6, column.name  # off the grid: fractions up to .5
        assert len(np.unique(steps)) > 1


def test_a_global_model_that_would_be_infinite_at_the_site_is_refused_before_any_charge(tmp_path, small_frame):
    """A weight is checked finite in the dtype the site trains in, not only in the dtype it came
    in: a float64 1e300 passed the wire's check and became an infinite float32 weight, and a
    complex inf passed it too (helper-90 F3). Non-finite weights had made a crafted model a
    membership oracle in an earlier audit; both now are malformed, and nothing is charged."""
    site = _site(tmp_path, small_frame)
    arrays, marginals = _global_model(site)
    name = next(name for name in arrays if name.startswith("discriminator."))
    for value in (np.full(arrays[name].shape, 1e300), np.full(arrays[name].shape, complex(np.inf, 0.0)),
                  arrays[name].astype(np.float64)):
        try:  # as the ClientApp decodes the message
            hostile = protocol.from_array_record(protocol.to_array_record({**arrays, name: value}))
        except protocol.ReplyError:
            continue
        refusal = _refusal(site, lambda model=hostile: site.train(_request(site), model, marginals))
        assert refusal.code is protocol.ErrorCode.MALFORMED_REQUEST
    assert PrivacyLedger.load(site.policy.ledger).events == []
    site.train(_request(site), arrays, marginals)  # the model as sent by fedsyn's coordinator is taken
    assert len(PrivacyLedger.load(site.policy.ledger).events) == 1


def test_a_deployed_site_refuses_to_run_with_a_seed(tmp_path, small_frame):
    """A seeded site keys its noise by (seed, ledger nonce, mechanism, ledger position): restored
    from an older backup of its state folder, it drew the same noise at a reused position, and a
    coordinator that asked the same tables at another noise solved the two answers for the
    exact counts (helper-84). A seed is for simulations: the deployed ClientApp (its policy
    found through the SuperNode's node config) and `fedsyn client start` refuse it."""
    from fedsyn.client.ops.launch import supernode_launch
    from fedsyn.client.policy import PolicyError

    seeded = _site(tmp_path / "seeded", small_frame, seed=3).policy
    policy = tmp_path / "seeded" / "sites" / "site-0" / "policy.json"
    budget = RecordDict({protocol.CONFIG: ConfigRecord({})})
    refused = client_reply(policy, budget, protocol.QUERY_BUDGET, deployed=True)
    assert refused.has_error() and refused.error.code == protocol.ErrorCode.POLICY_REFUSED
    assert "for simulations only" in refused.error.reason and PrivacyLedger.load(seeded.ledger).events == []
    with pytest.raises(PolicyError, match="for simulations only"):
        supernode_launch(policy)
    _site(tmp_path / "fresh", small_frame, seed=None)
    answered = client_reply(tmp_path / "fresh" / "sites" / "site-0" / "policy.json", budget, protocol.QUERY_BUDGET,
                            deployed=True)
    assert not answered.has_error()  # an unseeded deployed site answers


def test_a_refusal_whose_trail_cannot_be_written_goes_out_as_itself_after_its_hold(tmp_path, small_frame,
                                                                                   monkeypatch):
    """With its audit trail on a read-only disk, a refusal's trail line raised out of the
    ClientApp: Flower sent the OSError's text (a path at the site) to the coordinator, which kept
    it in its audit log and the release, and the reply skipped its hold, so every refusal that
    had read the rows timed them (helper-84). The refusal now goes out as itself, after the hold."""
    import errno

    from fedsyn.trust.audit import AuditLog

    site = _site(tmp_path, small_frame)
    policy = tmp_path / "sites" / "site-0" / "policy.json"
    site.policy.model_copy(update={"reply_quantum_seconds": 0.4}).save(policy)

    def read_only(*_args, **_kwargs):
        raise OSError(errno.EROFS, "Read-only file system", "/secret-ward/audit.jsonl")

    monkeypatch.setattr(AuditLog, "append_unless_repeated", read_only)
    config = ConfigRecord({"noise_multiplier": 20.0, "epsilon": 50.0, protocol.SCHEMA_HASH: "0" * 64})
    started = time.monotonic()
    reply = client_reply(policy, RecordDict({protocol.CONFIG: config}), protocol.QUERY_MARGINALS)
    assert time.monotonic() - started >= 0.4
    assert reply.has_error() and reply.error.code == protocol.ErrorCode.SCHEMA_MISMATCH
    assert "secret-ward" not in reply.error.reason and "OSError" not in reply.error.reason


def test_an_extract_replaced_between_charges_is_said_in_the_sites_log(tmp_path, small_frame, caplog):
    """helper-104 M7: an extract replaced mid-run (round 0 measured on the old file, training on
    the new one) went unsaid. The trail keeps the file's size and time with each charge (local),
    and the site's log says when they changed before a training round; a new run's round 0 on a
    new export is no news (helper-105 L2)."""
    import logging
    import os

    site = _site(tmp_path, small_frame)
    fingerprint = protocol.schema_fingerprint(site.schema)
    data = site.policy.data

    def newer_export() -> None:
        stat = data.stat()
        os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))

    arrays, marginals = _global_model(site)
    with caplog.at_level(logging.WARNING, logger="fedsyn.client"):
        site.release_marginals(30.0, 50.0, fingerprint, run_id="run-a")
        newer_export()
        site.release_marginals(30.0, 50.0, fingerprint, run_id="run-b")  # a new run's round 0: nothing said
        site.train(_request(site), arrays, marginals)  # the same file: nothing said
        assert "changed since this site's last charge" not in caplog.text
        newer_export()
        site.train(_request(site, round_=2), arrays, marginals)
    assert caplog.text.count("changed since this site's last charge") == 1 and str(data) in caplog.text

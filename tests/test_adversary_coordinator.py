"""A hostile coordinator against a real site, through the site's Flower ClientApp.

The coordinator chooses the global model, every setting and every byte of its messages; a
site's guarantee must hold whatever it chooses. Each exchange here is a real Flower Message
in and Message out (:func:`tests.helpers.client_reply`) to a simulated hospital prepared by
:func:`~fedsyn.simulations.run.prepare_sites`, and every reply is held to the site's
invariants (:func:`check_invariants`):

(a) a reply is either a refusal with an :class:`~fedsyn.federation.protocol.ErrorCode` and a
    public text, or exactly the agreed records with arrays that are all finite;
(b) a refusal charges nothing: the ledger's events are unchanged;
(c) a reply that ran a mechanism was charged exactly once, before it began (spies on
    ``GANTrainer.train`` and the site's ``noisy_marginals`` read the ledger file as they start);
(d) on every call of :func:`fedsyn.privacy.dp_sgd.clipped_sum` the production path makes,
    leaving a record out moves the (float32) sum by at most C, plus float32 rounding of the
    sum's magnitude, and the sum is finite;
(e) two seeded sites with the same extract but one target patient (:func:`make_twins`) give
    replies of the same kind (the same refusal code, finite or non-finite arrays): no request
    turns a patient's presence into a deterministic signal. The twins share every Poisson draw
    of the other rows, but not all later noise, so where the kinds differ the twins are made
    again at more seeds and some kind must be seen both with and without the target.

A request the site already answered (same run, round and request) must be answered again
from its store at no charge. The default suite runs a few fixed cases of each attack; the
full version (``pytest -m adversary``) draws models, clipping norms, learning rates and
sample rates with hypothesis and leaves every record out in (d).
"""

from __future__ import annotations

import functools
import json
import math
import re
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import ConfigRecord, Message, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import fedsyn.client.site as site_module
import fedsyn.privacy.dp_sgd as dp_sgd
from fedsyn.client.policy import RequestLimits, SitePolicy
from fedsyn.data.demo import demo_data_path, demo_schema_path
from fedsyn.data.schema import Schema
from fedsyn.data.tables import read_table
from fedsyn.federation import protocol
from fedsyn.model.config import GANConfig
from fedsyn.model.encoder import TableEncoder
from fedsyn.model.training import GANTrainer
from fedsyn.privacy.accounting import PrivacyEvent, PrivacyLedger
from fedsyn.privacy.marginals import Marginals
from fedsyn.privacy.randomness import torch_generator
from fedsyn.simulations.run import prepare_sites

from .helpers import client_reply
from .hostile import CANARY_LIGHT_CHAINS, TRAP, canary_tables, overflow_trap, with_layer

ErrorCode = protocol.ErrorCode
Kind = tuple[str, str]  # ("refused", code name) or ("arrays", "finite" / "non-finite")
FINITE: Kind = ("arrays", "finite")
NON_FINITE: Kind = ("arrays", "non-finite")

SEED = 5  # both twins' seed: the same Poisson draw for every shared row, the same noise until the batches differ
BUDGET = 1e4  # large enough that no request here is refused for budget unless it asks to be
ROWS = 120  # rows of each twin's extract (with the target: ROWS + 1)
FLOAT32_ULP = 2.0 ** -23  # float32 rounding, relative, with a factor 2 of slack
RESEEDS = 8  # (e): more seeds at which the twins are compared when their kinds differ at the first
LIGHT_LEAVE_OUT = 6  # records left out per clipped sum in the default suite, besides the target; None: every one
TRAIN = "train"

# A deployed site's defaults: q <= 0.5, C in [1e-3, 100], lr <= 0.1, width <= 1024, depth <= 4.
DEPLOYED = RequestLimits()
# A site whose operator widened every limit as far as the policy file accepts: then the
# mechanisms themselves, not the limits, must keep the guarantee ("clipping is total").
PERMISSIVE = RequestLimits(min_clip_norm=5e-324, max_clip_norm=1e6, max_sample_rate=1.0, max_learning_rate=1.0,
                           max_width=4096, max_layers=8, max_local_steps=100_000, max_batch_size=1_000_000)
# Found by this harness and fixed: a site sent NaN/inf arrays for a model that overflows on generated rows.
# A site now withholds such an update (a fixed site_failure reply, the charge kept); kept as a switch so the
# harness can tolerate non-finite replies again while (b)-(e) are studied on their own.
NON_FINITE_REPLIES_KNOWN = False


# -- the site as the coordinator reaches it ----------------------------------------------------

@dataclass(frozen=True)
class World:
    """One simulated hospital: the policy file its ClientApp loads, and what it guards."""

    policy: Path
    ledger: Path
    folder: Path
    schema: Schema
    table: pd.DataFrame = field(repr=False)

    @property
    def rows(self) -> int:
        return len(self.table)

    def events(self) -> list[PrivacyEvent]:
        return PrivacyLedger.load(self.ledger).events

    @property
    def fingerprint(self) -> str:
        return protocol.schema_fingerprint(self.schema)


def make_world(folder: Path, table: pd.DataFrame, limits: RequestLimits | None = None, seed: int = SEED) -> World:
    """A seeded simulated site for ``table``; ``limits`` replaces the simulation's own limits.
    Worlds of one seed share their stream (a fixed nonce): the attacks compare what two extracts
    make of the same draws, the strongest position a coordinator could hold."""
    plan = prepare_sites([table], demo_schema_path(), folder, epsilon=BUDGET, delta=1e-5, seed=seed,
                         stream_nonce=f"{seed:032x}")
    policy = plan.policies[0]
    if limits is not None:
        raw = json.loads(policy.read_text())
        raw["limits"] = limits.model_dump()
        policy.write_text(json.dumps(raw))
    return World(policy, SitePolicy.load(policy).ledger, folder, Schema.load(demo_schema_path()), table)


@dataclass(frozen=True)
class Twins:
    """Two seeded sites whose extracts differ only in the target patient (last in ``inside``)."""

    inside: World
    outside: World
    encoded: np.ndarray  # ``inside``'s rows under ``marginals``; the target is the last
    marginals: Marginals  # the global marginals the coordinator sends
    frame: pd.DataFrame = field(repr=False)  # what the twins were made from, to make more at other seeds
    limits: RequestLimits | None = None

    @property
    def target(self) -> np.ndarray:
        return self.encoded[-1]

    @property
    def worlds(self) -> tuple[World, World]:
        return self.inside, self.outside


def make_twins(folder: Path, frame: pd.DataFrame, limits: RequestLimits | None = None, seed: int = SEED) -> Twins:
    with_target, without = canary_tables(frame.head(ROWS + 1))
    inside = make_world(folder / "in", with_target, limits, seed)
    outside = make_world(folder / "out", without, limits, seed)
    marginals = Marginals.uniform(inside.schema)
    return Twins(inside, outside, TableEncoder(inside.schema, marginals).encode(with_target), marginals, frame,
                 limits)


# -- the hostile request -------------------------------------------------------------------------

@dataclass(frozen=True)
class Attack:
    """One hostile training request: the global model it carries and what it asks for.

    ``model`` "trap" is :func:`tests.hostile.overflow_trap` aimed at the target (it needs
    TRAP's discriminator), "plain" a freshly initialised model; ``layer``, when set, has every
    value replaced by ``value``. The settings may be ones GANConfig or the site refuses."""

    model: str = "trap"
    layer: str | None = None
    value: float = 0.0
    clip: float = 0.5
    lr: float = 1e-3
    sample_rate: float = 1.0
    steps: int = 2
    transport: str = "float32"
    generator_hidden: tuple[int, ...] = TRAP.generator_hidden
    discriminator_hidden: tuple[int, ...] = TRAP.discriminator_hidden
    noise_multiplier: float = 1.0

    def gan_config(self) -> dict[str, Any]:
        """The model settings as sent (JSON), whether or not GANConfig would accept them."""
        return {**asdict(TRAP), "max_grad_norm": self.clip, "generator_lr": self.lr, "discriminator_lr": self.lr,
                "generator_hidden": list(self.generator_hidden),
                "discriminator_hidden": list(self.discriminator_hidden)}

    def shapes(self) -> GANConfig:
        """A valid config with this attack's layer sizes (TRAP's when they are not valid)."""
        try:
            return replace(TRAP, generator_hidden=self.generator_hidden,
                           discriminator_hidden=self.discriminator_hidden)
        except ValueError:
            return TRAP

    def arrays(self, twins: Twins) -> dict[str, np.ndarray]:
        shapes = self.shapes()
        if self.model == "trap" and shapes.discriminator_hidden == TRAP.discriminator_hidden:
            arrays = overflow_trap(twins.inside.schema, twins.marginals, twins.encoded, len(twins.encoded) - 1, shapes)
        else:
            trainer = GANTrainer(TableEncoder(twins.inside.schema, twins.marginals), shapes,
                                 rng=torch_generator(7, "hostile-plain"))
            arrays = dict(trainer.state_arrays())
        return with_layer(arrays, self.layer, self.value) if self.layer else arrays

    def record(self, world: World, run: str = "", **fields: object) -> ConfigRecord:
        """The config record of run ``run``; ``fields`` replace entries of it (``None`` removes one)."""
        base = protocol.TrainInstructions(round=1, total_rounds=1, local_steps=1, sample_rate=0.5, epsilon=BUDGET,
                                          noise_multiplier=1.0, gan_config=TRAP, schema_sha256=world.fingerprint)
        record: dict[str, Any] = {**dict(base.to_record()), protocol.RUN_ID: run, "local_steps": self.steps,
                                  "sample_rate": self.sample_rate, "noise_multiplier": self.noise_multiplier,
                                  "transport_dtype": self.transport, "gan_config": json.dumps(self.gan_config())}
        for key, value in fields.items():
            if value is None:
                record.pop(key, None)
            else:
                record[key] = value
        return ConfigRecord(record)

    def message(self, twins: Twins, run: str = "", **fields: object) -> Callable[[World], RecordDict]:
        """A fresh message per world (the two twins share the schema, so the same content)."""
        arrays = self.arrays(twins)
        return lambda world: train_content(self.record(world, run, **fields), arrays, twins.marginals)


def train_content(record: ConfigRecord, arrays: dict[str, np.ndarray], marginals: Marginals) -> RecordDict:
    return RecordDict({protocol.CONFIG: record, protocol.ARRAYS: protocol.to_array_record(arrays),
                       protocol.MARGINALS: protocol.to_array_record(marginals.tables)})


def marginals_content(world: World, **fields: object) -> RecordDict:
    """A round-0 query; ``fields`` replace entries (``None`` removes one)."""
    record: dict[str, Any] = dict(protocol.MarginalsQuery(30.0, BUDGET, world.fingerprint).to_record())
    for key, value in fields.items():
        if value is None:
            record.pop(key, None)
        else:
            record[key] = value
    return RecordDict({protocol.CONFIG: ConfigRecord(record)})


# -- what the harness watches while the site works ----------------------------------------------

@dataclass
class ClipBound:
    """Stands in for ``dp_sgd.clipped_sum``: returns the real sum, then recomputes it with records
    left out one at a time and keeps every record whose removal moves it by more than C plus
    float32 rounding of the sums' magnitude (invariant (d)). Never raises: the ClientApp would
    turn an exception into a SITE_FAILURE reply, so problems are kept and asserted afterwards."""

    real: Callable[..., dict[str, torch.Tensor]]
    leave_out: int | None  # besides the target, how many records (evenly spaced); None: every one
    target: np.ndarray | None = None
    calls: int = 0
    checked: int = 0
    worst: float = 0.0  # the largest one-record move seen, in units of C
    violations: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __call__(self, module: nn.Module, loss_of_one: Callable[[torch.Tensor], torch.Tensor],
                 inputs: tuple[torch.Tensor, ...], max_grad_norm: float, present: torch.Tensor | None = None
                 ) -> dict[str, torch.Tensor]:
        summed = self.real(module, loss_of_one, inputs, max_grad_norm, present)
        self.calls += 1
        try:
            self._check(summed, module, loss_of_one, inputs, max_grad_norm, present)
        except Exception as exc:  # noqa: BLE001 - reported by check_invariants
            self.errors.append(f"{type(exc).__name__}: {exc}")
        return summed

    def _records(self, rows: torch.Tensor) -> list[int]:
        n = rows.shape[0]
        chosen = set(range(n)) if self.leave_out is None else \
            {int(i) for i in np.linspace(0, n - 1, min(n, self.leave_out))}
        if self.target is not None:
            target = torch.as_tensor(self.target, dtype=rows.dtype)
            chosen |= {int(i) for i in (rows[:, :target.shape[0]] == target).all(dim=1).nonzero().flatten()}
        return sorted(chosen)

    def _check(self, summed: dict[str, torch.Tensor], module: nn.Module,
               loss_of_one: Callable[[torch.Tensor], torch.Tensor], inputs: tuple[torch.Tensor, ...],
               max_grad_norm: float, present: torch.Tensor | None) -> None:
        flat = _flat(summed)
        if not torch.isfinite(flat).all():
            self.violations.append("the clipped sum is not finite")
            return
        for i in self._records(inputs[0]):
            others = tuple(torch.cat([x[:i], x[i + 1:]]) for x in inputs)
            others_present = None if present is None else torch.cat([present[:i], present[i + 1:]])
            # An empty batch has no clipped sum (private_gradient adds noise to zeros instead).
            fewer = _flat(self.real(module, loss_of_one, others, max_grad_norm, others_present)) \
                if others[0].shape[0] else torch.zeros_like(flat)
            moved = float((flat - fewer).norm())
            bound = max_grad_norm * (1 + 1e-5) + FLOAT32_ULP * (float(flat.norm()) + float(fewer.norm()))
            self.checked += 1
            self.worst = max(self.worst, moved / max_grad_norm)
            if not moved <= bound:  # NaN fails too
                self.violations.append(f"record {i} of {inputs[0].shape[0]} moves the sum by {moved:.3g} "
                                       f"= {moved / max_grad_norm:.4g} C (C={max_grad_norm:g})")


def _flat(summed: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([summed[name].double().flatten() for name in sorted(summed)])


@dataclass
class Exchange:
    """One message to a site, its reply, and what the harness saw meanwhile."""

    world: World
    reply: Message
    before: list[PrivacyEvent]
    after: list[PrivacyEvent]
    at_mechanism: list[list[PrivacyEvent]]  # the ledger file's events when each mechanism began (train, marginals)
    clip: ClipBound


def send(world: World, content: RecordDict, message_type: str = TRAIN, *, leave_out: int | None = LIGHT_LEAVE_OUT,
         target: np.ndarray | None = None) -> Exchange:
    """Send one message through the site's ClientApp with the spies of (c) and (d) in place:
    each mechanism (DP-SGD training, the noisy marginals) notes the ledger file as it begins."""
    before = world.events()
    at_mechanism: list[list[PrivacyEvent]] = []
    clip = ClipBound(dp_sgd.clipped_sum, leave_out, target)

    def spy(mechanism: Callable[..., Any]) -> Callable[..., Any]:
        def noted(*args: Any, **kwargs: Any) -> Any:
            at_mechanism.append(world.events())
            return mechanism(*args, **kwargs)
        return noted

    with mock.patch.object(dp_sgd, "clipped_sum", clip), \
            mock.patch.object(GANTrainer, "train", spy(GANTrainer.train)), \
            mock.patch.object(site_module, "noisy_marginals", spy(site_module.noisy_marginals)):
        reply = client_reply(world.policy, content, message_type)
    return Exchange(world, reply, before, world.events(), at_mechanism, clip)


# -- the invariants ------------------------------------------------------------------------------

def assert_public(reason: str, world: World) -> None:
    """(a) A refusal's text holds no private value: no local path or file, no exception text,
    not the extract's row count, not the target's cells."""
    for private in (str(world.folder), "data.parquet", "ledger.json", "Traceback", f"{CANARY_LIGHT_CHAINS:g}"):
        assert private not in reason, (private, reason)
    assert not re.search(rf"(?<![\d.]){world.rows}(?![\d.])", reason), reason


def _finite(record: Any) -> bool:
    return all(np.isfinite(np.asarray(value.numpy() if hasattr(value, "numpy") else value, dtype=float)).all()
               for value in record.values())


def check_invariants(exchange: Exchange, *, replay_of: Exchange | None = None,
                     non_finite_known: bool = NON_FINITE_REPLIES_KNOWN) -> Kind:
    """Assert (a)-(d) on one exchange (and, for a replay, that nothing ran or was charged and
    the stored answer came back); return the reply's kind for (e)."""
    clip, reply = exchange.clip, exchange.reply
    assert clip.errors == [], f"(d) the clipping spy failed: {clip.errors[:3]}"
    assert clip.violations == [], f"(d) one record moved the clipped sum by more than C: {clip.violations[:3]}"
    if reply.has_error():
        code = ErrorCode(reply.error.code)  # (a) one of the fixed codes, else ValueError
        assert reply.error.reason.startswith(f"{code.name.lower()}: "), reply.error.reason
        assert_public(reply.error.reason, exchange.world)
        if code is ErrorCode.SITE_FAILURE and exchange.at_mechanism:
            _assert_charged_before_mechanism(exchange)  # failed mid-mechanism: over-counted, never forgotten
        else:
            assert exchange.after == exchange.before, f"(b) a {code.name} refusal charged the ledger"
            assert exchange.at_mechanism == [], f"(b) a {code.name} refusal ran a mechanism"
        return ("refused", code.name)
    content = reply.content
    payload = protocol.ARRAYS if protocol.ARRAYS in content.array_records else protocol.MARGINALS
    protocol.check_reply_records(content, payload)  # (a) exactly the agreed records, declared metrics only
    event, claimed, delta, _ = protocol.decode_event(content.config_records[protocol.PRIVACY])
    assert math.isfinite(claimed) and 0 < delta < 1
    finite = _finite(content.array_records[payload]) and (payload == protocol.MARGINALS
                                                          or _finite(content.metric_records[protocol.METRICS]))
    if replay_of is not None:
        assert exchange.after == exchange.before and exchange.at_mechanism == [], "a replayed request was charged"
        stored = replay_of.reply.content.array_records[payload]
        for name, array in content.array_records[payload].items():
            np.testing.assert_array_equal(array.numpy(), stored[name].numpy())
    else:
        _assert_charged_before_mechanism(exchange)
        assert (event.mechanism, event.round) == (exchange.after[-1].mechanism, exchange.after[-1].round)
        assert event.mechanism == ("dp-sgd" if payload == protocol.ARRAYS else "gaussian-marginals")
    assert finite or non_finite_known, "(a) the site sent non-finite arrays or metrics"
    return FINITE if finite else NON_FINITE


def _assert_charged_before_mechanism(exchange: Exchange) -> None:
    """(c) One charge, already in the ledger file when the mechanism began, and nothing after it."""
    assert len(exchange.after) == len(exchange.before) + 1 and exchange.after[:-1] == exchange.before, \
        "(c) a request that ran a mechanism did not charge exactly once"
    assert exchange.at_mechanism == [exchange.after], \
        "(c) the mechanism began before its charge was in the ledger file"


def attack_twins(twins: Twins, message: Callable[[World], RecordDict], message_type: str = TRAIN, *,
                 leave_out: int | None = LIGHT_LEAVE_OUT, non_finite_known: bool = NON_FINITE_REPLIES_KNOWN
                 ) -> tuple[Kind, list[Exchange]]:
    """Send the same request to both twins; (a)-(d) on each reply and (e) across them."""
    exchanges = [send(world, message(world), message_type, leave_out=leave_out, target=twins.target)
                 for world in twins.worlds]
    kinds = [check_invariants(exchange, non_finite_known=non_finite_known) for exchange in exchanges]
    if kinds[0] != kinds[1]:
        _assert_kind_does_not_separate(twins, message, message_type, kinds, non_finite_known)
    return kinds[0], exchanges


def _assert_kind_does_not_separate(twins: Twins, message: Callable[[World], RecordDict], message_type: str,
                                   kinds: list[Kind], non_finite_known: bool) -> None:
    """(e) when the twins' kinds differ. The twins share every Poisson draw of the other rows,
    but the target's own draw shifts the stream, so the noise then differs: a model whose
    finiteness turns on the noise (lr 1, C 1e6) may differ by chance, which DP allows. A
    membership oracle differs at every seed: the twins are made again at RESEEDS more seeds,
    and some kind must then be seen both with and without the target."""
    seen: tuple[list[Kind], list[Kind]] = ([kinds[0]], [kinds[1]])
    for offset in range(1, RESEEDS + 1):
        with tempfile.TemporaryDirectory() as folder:
            again = make_twins(Path(folder), twins.frame, twins.limits, SEED + offset)
            for side, world in zip(seen, again.worlds):
                exchange = send(world, message(world), message_type, leave_out=0)
                side.append(check_invariants(exchange, non_finite_known=non_finite_known))
    assert set(seen[0]) & set(seen[1]), \
        f"(e) the reply's kind tells the worlds apart at {RESEEDS + 1} seeds: with {seen[0]}, without {seen[1]}"


@pytest.fixture()
def twins(tmp_path: Path, demo_frame: pd.DataFrame) -> Twins:
    return make_twins(tmp_path, demo_frame.sample(n=600, random_state=0))


@pytest.fixture()
def deployed_twins(tmp_path: Path, demo_frame: pd.DataFrame) -> Twins:
    return make_twins(tmp_path, demo_frame.sample(n=600, random_state=0), DEPLOYED)


@pytest.fixture()
def permissive_twins(tmp_path: Path, demo_frame: pd.DataFrame) -> Twins:
    return make_twins(tmp_path, demo_frame.sample(n=600, random_state=0), PERMISSIVE)


# -- hostile models the site trains on --------------------------------------------------------------

D_IN, D_OUT, G_HEAD = "discriminator.net.0.weight", "discriminator.net.6.bias", "generator.head.weight"
TRAINED = {
    "overflow trap on the target, q=1": Attack(),
    "trap at the smallest C allowed": Attack(clip=1e-3),
    "trap at the largest C allowed": Attack(clip=100.0),
    "trap with a tiny learning rate": Attack(lr=1e-38),
    "trap with the largest learning rate": Attack(lr=0.1),
    "trap with a sparse batch": Attack(sample_rate=0.05, steps=3),
    "discriminator input layer 1e-38": Attack(model="plain", layer=D_IN, value=1e-38),
    "discriminator input layer subnormal": Attack(model="plain", layer=D_IN, value=1e-45),
    "widest layers the site allows": Attack(model="plain", generator_hidden=(1024,), discriminator_hidden=(1024,),
                                            steps=1),
    "deepest networks the site allows": Attack(model="plain", generator_hidden=(8,) * 4,
                                               discriminator_hidden=(8,) * 4),
}


@pytest.mark.parametrize("attack", TRAINED.values(), ids=TRAINED.keys())
def test_a_hostile_model_is_trained_on_within_every_invariant(twins: Twins, attack: Attack):
    """Models and settings a site accepts: each reply trained (charged first), each clipped sum
    kept every record within C, and the reply is the same kind with or without the target."""
    kind, exchanges = attack_twins(twins, attack.message(twins), non_finite_known=False)
    assert kind == FINITE
    assert all(exchange.clip.checked > 0 for exchange in exchanges)  # (d) saw real sums, not empty batches


NON_FINITE_MODELS = {
    "discriminator input layer 1e38": Attack(model="plain", layer=D_IN, value=1e38),
    "discriminator input layer -1e38": Attack(model="plain", layer=D_IN, value=-1e38),
    "discriminator output bias -1e38": Attack(model="plain", layer=D_OUT, value=-1e38),
    "generator head 1e38": Attack(model="plain", layer=G_HEAD, value=1e38),
    "float16 transport of weights beyond its range": Attack(model="plain", layer="generator.head.bias", value=1e5,
                                                            transport="float16"),
}


@pytest.mark.parametrize("attack", NON_FINITE_MODELS.values(), ids=NON_FINITE_MODELS.keys())
def test_a_model_that_overflows_on_generated_rows_keeps_the_privacy_invariants(twins: Twins, attack: Attack):
    """What (b)-(e) demand of a model that overflows everywhere: no record moves a clipped sum by
    more than C, the charge comes first, and the (non-finite) reply is the same with or without
    the target, so it tells the coordinator nothing about any patient."""
    attack_twins(twins, attack.message(twins), non_finite_known=True)


@pytest.mark.parametrize("attack", NON_FINITE_MODELS.values(), ids=NON_FINITE_MODELS.keys())
def test_a_model_that_overflows_on_generated_rows_gets_a_finite_reply_or_a_refusal(twins: Twins, attack: Attack):
    attack_twins(twins, attack.message(twins), non_finite_known=False)


@pytest.mark.parametrize("clip", [1e-44, 1e-45])
def test_a_subnormal_clipping_norm_still_bounds_one_record(permissive_twins: Twins, clip: float):
    attack_twins(permissive_twins, Attack(model="plain", clip=clip).message(permissive_twins))


PERMITTED_EXTREMES = {
    "C just above float32's normal range": Attack(clip=1e-36),
    "the largest C GANConfig accepts": Attack(clip=1e6),
    "learning rate 1": Attack(model="plain", lr=1.0),
    "width 4096": Attack(model="plain", discriminator_hidden=(4096,), steps=1),
    "depth 8": Attack(model="plain", discriminator_hidden=(4,) * 8, generator_hidden=(4,) * 8),
}


@pytest.mark.parametrize("attack", PERMITTED_EXTREMES.values(), ids=PERMITTED_EXTREMES.keys())
def test_a_site_that_allows_everything_still_keeps_the_invariants(permissive_twins: Twins, attack: Attack):
    """Limits are a second line: at the edges of what GANConfig itself accepts, clipping alone
    must keep (b)-(e)."""
    kind, _ = attack_twins(permissive_twins, attack.message(permissive_twins), non_finite_known=False)
    assert kind == FINITE


# -- requests the site must refuse, charging nothing ------------------------------------------------

NAN, INF = float("nan"), float("inf")
REFUSED = {
    "C = 0": (Attack(clip=0.0), ErrorCode.MALFORMED_REQUEST),
    "C < 0": (Attack(clip=-1.0), ErrorCode.MALFORMED_REQUEST),
    "C NaN": (Attack(clip=NAN), ErrorCode.MALFORMED_REQUEST),
    "C infinite": (Attack(clip=INF), ErrorCode.MALFORMED_REQUEST),
    "C subnormal": (Attack(clip=1e-40), ErrorCode.POLICY_REFUSED),
    "C above the ceiling": (Attack(clip=1e5), ErrorCode.POLICY_REFUSED),
    "q = 1 at a deployed site": (Attack(sample_rate=1.0), ErrorCode.POLICY_REFUSED),
    "q above 1": (Attack(sample_rate=1.5), ErrorCode.MALFORMED_REQUEST),
    "q = 0": (Attack(sample_rate=0.0), ErrorCode.MALFORMED_REQUEST),
    "q NaN": (Attack(sample_rate=NAN), ErrorCode.MALFORMED_REQUEST),
    "learning rate above the limit": (Attack(sample_rate=0.5, lr=0.5), ErrorCode.POLICY_REFUSED),
    "learning rate above 1": (Attack(sample_rate=0.5, lr=2.0), ErrorCode.MALFORMED_REQUEST),
    "learning rate 0": (Attack(sample_rate=0.5, lr=0.0), ErrorCode.MALFORMED_REQUEST),
    "one layer too wide": (Attack(sample_rate=0.5, model="plain", discriminator_hidden=(1025,)),
                           ErrorCode.POLICY_REFUSED),
    "one layer too many": (Attack(sample_rate=0.5, model="plain", discriminator_hidden=(4,) * 5),
                           ErrorCode.POLICY_REFUSED),
    "deeper than GANConfig allows": (Attack(sample_rate=0.5, discriminator_hidden=(4,) * 9),
                                     ErrorCode.MALFORMED_REQUEST),
    "wider than GANConfig allows": (Attack(sample_rate=0.5, discriminator_hidden=(4097,)),
                                    ErrorCode.MALFORMED_REQUEST),
    "NaN weights": (Attack(sample_rate=0.5, layer=D_IN, value=NAN), ErrorCode.MALFORMED_REQUEST),
    "infinite weights": (Attack(sample_rate=0.5, layer=G_HEAD, value=INF), ErrorCode.MALFORMED_REQUEST),
    "noise below the site's minimum": (Attack(sample_rate=0.5, noise_multiplier=0.1), ErrorCode.POLICY_REFUSED),
    "too many local steps": (Attack(sample_rate=0.5, steps=201), ErrorCode.POLICY_REFUSED),
}


@pytest.mark.parametrize("attack, code", REFUSED.values(), ids=REFUSED.keys())
def test_a_request_outside_the_contract_or_the_policy_is_refused_at_no_cost(deployed_twins: Twins, attack: Attack,
                                                                           code: ErrorCode):
    kind, _ = attack_twins(deployed_twins, attack.message(deployed_twins))
    assert kind == ("refused", code.name)


OK = Attack(sample_rate=0.5, steps=1)
MALFORMED = {
    **{f"no '{key}'": {key: None} for key in ("round", "total_rounds", "local_steps", "sample_rate", "epsilon",
                                                "gan_config", protocol.SCHEMA_HASH)},
    "round as text": {"round": "one"},
    "round as a list": {"round": [1, 2]},
    "round 0": {"round": 0},
    "round after the last": {"round": 3, "total_rounds": 2},
    "steps as bytes": {"local_steps": b"\x01"},
    "epsilon NaN": {"epsilon": NAN},
    "epsilon 'NaN' as text": {"epsilon": "NaN"},
    "epsilon infinite": {"epsilon": INF},
    "epsilon negative": {"epsilon": -1.0},
    "noise NaN": {"noise_multiplier": NAN},
    "noise 0": {"noise_multiplier": 0.0},
    "noise beyond any budget (helper-94)": {"noise_multiplier": 1e300},
    "gan_config not JSON": {"gan_config": "{"},
    "gan_config a list": {"gan_config": "[1, 2]"},
    "gan_config with an unknown field": {"gan_config": json.dumps({**asdict(TRAP), "colour": 1})},
    "transport dtype float8": {"transport_dtype": "float8"},
    "a site slot for a model without slots": {protocol.SITE_SLOT: 0},
    "a run id that is a path": {protocol.RUN_ID: "../../ledger"},
}


@pytest.mark.parametrize("changes", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_instructions_are_refused_as_malformed_at_no_cost(twins: Twins, changes: dict[str, object]):
    kind, _ = attack_twins(twins, OK.message(twins, **changes))
    assert kind == ("refused", ErrorCode.MALFORMED_REQUEST.name)


def test_a_foreign_schema_is_refused_at_no_cost(twins: Twins):
    kind, _ = attack_twins(twins, OK.message(twins, **{protocol.SCHEMA_HASH: "f" * 64}))
    assert kind == ("refused", ErrorCode.SCHEMA_MISMATCH.name)


def test_a_budget_beyond_the_sites_is_refused_at_no_cost(twins: Twins):
    kind, _ = attack_twins(twins, OK.message(twins, epsilon=BUDGET * 2))
    assert kind == ("refused", ErrorCode.BUDGET_EXHAUSTED.name)


def _without_record(key: str) -> Callable[[RecordDict], RecordDict]:
    return lambda content: RecordDict({k: v for k, v in content.items() if k != key})


def _arrays_changed(change: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
                    ) -> Callable[[RecordDict], RecordDict]:
    def edit(content: RecordDict) -> RecordDict:
        arrays = {name: array.numpy() for name, array in content.array_records[protocol.ARRAYS].items()}
        return RecordDict({**dict(content.items()), protocol.ARRAYS: protocol.to_array_record(change(arrays))})
    return edit


MALFORMED_RECORDS = {
    "no model arrays": _without_record(protocol.ARRAYS),
    "no marginals": _without_record(protocol.MARGINALS),
    "no instructions": _without_record(protocol.CONFIG),
    "a layer missing": _arrays_changed(lambda a: {k: v for k, v in a.items() if k != D_IN}),
    "an extra discriminator layer": _arrays_changed(lambda a: {**a, "discriminator.net.9.weight": a[D_IN]}),
    "a layer of the wrong shape": _arrays_changed(lambda a: {**a, D_IN: a[D_IN][:, :3]}),
    "NaN marginals": lambda content: RecordDict({**dict(content.items()), protocol.MARGINALS: protocol.to_array_record(
        {k: v.numpy() * np.nan for k, v in content.array_records[protocol.MARGINALS].items()})}),
}


@pytest.mark.parametrize("edit", MALFORMED_RECORDS.values(), ids=MALFORMED_RECORDS.keys())
def test_malformed_messages_are_refused_at_no_cost(twins: Twins, edit: Callable[[RecordDict], RecordDict]):
    """A message missing a record, or whose model does not fit the schema, is refused (whatever
    the code, it is fixed and public) before anything is charged."""
    message = OK.message(twins)
    kind, _ = attack_twins(twins, lambda world: edit(message(world)))
    assert kind[0] == "refused"


HOSTILE_MARGINALS = {"all zero": 0.0, "huge": 1e300, "negative": -1.0, "tiny": 1e-300}


@pytest.mark.parametrize("value", HOSTILE_MARGINALS.values(), ids=HOSTILE_MARGINALS.keys())
def test_hostile_global_marginals_give_the_same_kind_of_reply_with_or_without_the_target(twins: Twins, value: float):
    """The global marginals fix how the site encodes its rows; whatever they hold, (a)-(e) hold."""
    message = OK.message(twins)

    def hostile(world: World) -> RecordDict:
        content = message(world)
        tables = {k: np.full_like(v.numpy(), value) for k, v in content.array_records[protocol.MARGINALS].items()}
        return RecordDict({**dict(content.items()), protocol.MARGINALS: protocol.to_array_record(tables)})

    attack_twins(twins, hostile)


MALFORMED_QUERIES = {
    "epsilon NaN": {"epsilon": NAN},
    "epsilon infinite": {"epsilon": INF},
    "noise 0": {"noise_multiplier": 0.0},
    "noise beyond any budget (helper-94)": {"noise_multiplier": 1e300},
    "noise negative": {"noise_multiplier": -30.0},
    "noise as text": {"noise_multiplier": "thirty"},
    "no schema": {protocol.SCHEMA_HASH: None},
    "no epsilon": {"epsilon": None},
    "sites 0": {"sites": 0},  # would make a site alone's release, which costs more than the one charged
    "sites negative": {"sites": -3},
    "sites huge": {"sites": 10**9},
    "sites as text": {"sites": "many"},
}


@pytest.mark.parametrize("changes", MALFORMED_QUERIES.values(), ids=MALFORMED_QUERIES.keys())
def test_malformed_marginals_queries_are_refused_at_no_cost(twins: Twins, changes: dict[str, object]):
    kind, _ = attack_twins(twins, lambda world: marginals_content(world, **changes), protocol.QUERY_MARGINALS)
    assert kind == ("refused", ErrorCode.MALFORMED_REQUEST.name)


# -- replays and keys the site must ignore -------------------------------------------------------

def test_a_replayed_training_request_is_answered_from_storage_at_no_charge(twins: Twins):
    world = twins.inside
    message = OK.message(twins, run="hostile-run")
    first = send(world, message(world))
    assert check_invariants(first) == FINITE
    again = send(world, message(world))
    assert check_invariants(again, replay_of=first) == FINITE
    # The same run and round with another request is new work: checked and charged again.
    other = send(world, replace(OK, lr=2e-3).message(twins, run="hostile-run")(world))
    assert check_invariants(other) == FINITE and len(other.after) == len(first.after) + 1


def test_a_replayed_marginals_query_is_answered_from_storage_at_no_charge(twins: Twins):
    world = twins.inside
    first = send(world, marginals_content(world, run_id="hostile-run"), protocol.QUERY_MARGINALS)
    assert check_invariants(first) == FINITE and len(first.after) == 1
    again = send(world, marginals_content(world, run_id="hostile-run"), protocol.QUERY_MARGINALS)
    assert check_invariants(again, replay_of=first) == FINITE


def test_a_replayed_refusal_is_refused_again_at_no_charge(twins: Twins):
    message = Attack(clip=1e5).message(twins, run="hostile-run")
    for _ in range(2):
        kind, _ = attack_twins(twins, message)
        assert kind == ("refused", ErrorCode.POLICY_REFUSED.name)


def test_keys_naming_the_sites_randomness_change_nothing(tmp_path: Path, twins: Twins):
    """A coordinator never chooses a site's randomness: extra keys are ignored, so a request with
    a 'seed' gets exactly the reply that a copy of the site (same seed, rows and ledger
    position) gives the request without it."""
    copy = make_world(tmp_path / "copy", twins.inside.table, None)
    with_keys = send(twins.inside, OK.message(twins, seed=1, stream_nonce="00" * 16)(twins.inside))
    without = send(copy, OK.message(twins)(copy))
    assert check_invariants(with_keys) == check_invariants(without) == FINITE
    for name, array in with_keys.reply.content.array_records[protocol.ARRAYS].items():
        np.testing.assert_array_equal(array.numpy(), without.reply.content.array_records[protocol.ARRAYS][name].numpy())


# -- the harness has teeth: each invariant fails on the bug it is there for ------------------------

def test_the_harness_catches_the_first_audits_nan_oracle(twins: Twins):
    """Finding 1 of the second audit put back in memory (an overflowing record's ``inf * 0``
    poisons the sum): the trap must then fail (d), the sum being NaN exactly when the target is in."""
    with mock.patch.object(dp_sgd, "_finite_rows", lambda tensors, batch: torch.ones(batch, dtype=torch.bool)), \
            pytest.raises(AssertionError, match=r"\(d\) .*not finite"):
        attack_twins(twins, Attack(steps=1).message(twins))


def test_the_harness_catches_a_missing_clip(twins: Twins):
    with mock.patch.object(dp_sgd, "clip_factors", lambda norms, c: torch.ones_like(norms, dtype=torch.float64)), \
            pytest.raises(AssertionError, match=r"\(d\) one record moved the clipped sum by more than C"):
        attack_twins(twins, Attack(model="plain", clip=1e-3, steps=1).message(twins))


def test_the_harness_catches_a_deterministic_membership_oracle(twins: Twins):
    """A mechanism that answers NaN whenever the target is in its batch (its clipped sum is
    fine, so only (e) can see it): the kind separates the twins at every seed."""
    import fedsyn.model.training as training

    real = training.private_gradient

    def leaky(module: nn.Module, loss_of_one: Any, inputs: tuple[torch.Tensor, ...], **kwargs: Any):
        gradient = real(module, loss_of_one, inputs, **kwargs)
        target = torch.as_tensor(twins.target)
        if (inputs[0] == target).all(dim=1).any():
            gradient = {name: value * float("nan") for name, value in gradient.items()}
        return gradient

    with mock.patch.object(training, "private_gradient", leaky), \
            pytest.raises(AssertionError, match=r"\(e\) the reply's kind tells the worlds apart"):
        attack_twins(twins, Attack(steps=1).message(twins), leave_out=0)


# -- the full version: hypothesis draws the attack ------------------------------------------------

LAYERS = tuple(GANTrainer(TableEncoder(Schema.load(demo_schema_path())), TRAP,
                          rng=torch_generator(0, "layer-names")).state_arrays())
EXTREMES = (1e38, -1e38, 3.4e38, -3.4e38, 1e20, 1e-38, -1e-38, 1e-45, 0.0, 65504.0, 1e5)


def _log_uniform(low: float, high: float) -> st.SearchStrategy[float]:
    return st.floats(math.log10(low), math.log10(high)).map(lambda exponent: min(high, max(low, 10.0 ** exponent)))


@st.composite
def attacks(draw: st.DrawFn, clip: st.SearchStrategy[float], lr: st.SearchStrategy[float]) -> Attack:
    """A hostile model (the trap or a plain one, one layer set to an extreme or any float32) and
    settings within what a site accepts."""
    return Attack(
        model=draw(st.sampled_from(["trap", "plain"])),
        layer=draw(st.none() | st.sampled_from(LAYERS)),
        value=draw(st.sampled_from(EXTREMES) | st.floats(width=32, allow_nan=False, allow_infinity=False)),
        clip=draw(clip), lr=draw(lr),
        sample_rate=draw(st.sampled_from([1.0, 0.5]) | st.floats(0.02, 1.0)),
        steps=draw(st.integers(1, 3)),
        transport=draw(st.sampled_from(["float32", "float16"])),
    )


@functools.cache
def hypothesis_frame() -> pd.DataFrame:
    """The demo rows the hypothesis tests draw twins from (not a fixture: hypothesis would print it)."""
    return read_table(demo_data_path(), Schema.load(demo_schema_path())).sample(n=600, random_state=0)


def attack_and_replay(attack: Attack, limits: RequestLimits | None = None) -> None:
    """(a)-(e) on both twins with every record left out in (d); then the same request again,
    which must come back from storage at no charge (or, if refused, be refused again)."""
    with tempfile.TemporaryDirectory() as folder:
        twins = make_twins(Path(folder), hypothesis_frame(), limits)
        message = attack.message(twins, run="hypothesis-run")
        _, first = attack_twins(twins, message, leave_out=None)
        for world, earlier in zip(twins.worlds, first):
            again = send(world, message(world), leave_out=0)
            replayed = None if earlier.reply.has_error() else earlier
            assert check_invariants(again, replay_of=replayed) == check_invariants(earlier)


FULL = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.adversary
@FULL
@given(attack=attacks(clip=st.sampled_from([1e-3, 100.0]) | _log_uniform(1e-3, 100.0),
                      lr=st.sampled_from([1e-38, 0.1]) | _log_uniform(1e-38, 0.1)))
def test_hypothesis_hostile_models_at_a_simulated_site(attack: Attack):
    attack_and_replay(attack)


@pytest.mark.adversary
@FULL
@given(attack=attacks(clip=st.sampled_from([1e-36, 1e6]) | _log_uniform(1e-36, 1e6),
                      lr=st.sampled_from([1e-38, 1.0]) | _log_uniform(1e-38, 1.0)))
def test_hypothesis_hostile_models_at_a_site_that_allows_everything(attack: Attack):
    """C stays above float32's subnormal range here: below it is the known finding of
    test_a_subnormal_clipping_norm_still_bounds_one_record."""
    attack_and_replay(attack, PERMISSIVE)


CONFIG_KEYS = ("round", "total_rounds", "local_steps", "sample_rate", "epsilon", "noise_multiplier", "gan_config",
               "transport_dtype", protocol.SCHEMA_HASH, protocol.RUN_ID, protocol.SITE_SLOT, "seed")
SCALARS = (st.integers(-(2 ** 63), 2 ** 63 - 1) | st.floats() | st.booleans() | st.binary(max_size=8)
           | st.text(max_size=12) | st.sampled_from(["NaN", "inf", "-0", "1e309", "0x10", " 1 ", "float16"]))
GAN_FIELDS = tuple(asdict(TRAP))
JSON_VALUES = st.none() | st.booleans() | st.floats() | st.integers(-(2 ** 70), 2 ** 70) | st.text(max_size=8) \
    | st.lists(st.integers(-5, 5000), max_size=10)
RECORD_VALUES = st.none() | SCALARS | st.lists(st.integers(-5, 5), max_size=3) \
    | st.builds(lambda key, value: json.dumps({**asdict(TRAP), key: value}), st.sampled_from(GAN_FIELDS), JSON_VALUES)


@pytest.mark.adversary
@FULL
@given(changes=st.dictionaries(st.sampled_from(CONFIG_KEYS), RECORD_VALUES, min_size=1, max_size=3),
       query=st.booleans())
def test_hypothesis_malformed_requests(changes: dict[str, object], query: bool):
    """Any value of any type in any field, or a field missing: a refusal or a reply within
    (a)-(e); whatever the site does, it does the same with or without the target."""
    with tempfile.TemporaryDirectory() as folder:
        twins = make_twins(Path(folder), hypothesis_frame())
        if query:
            attack_twins(twins, lambda world: marginals_content(world, **changes), protocol.QUERY_MARGINALS)
        else:
            attack_twins(twins, OK.message(twins, **changes), leave_out=None)

"""The Flower ClientApp: decodes the coordinator's message, runs :class:`Site`, replies.

Refusals (policy, budget, schema, bad data, ledger) become Flower error replies with a
fixed :class:`~fedsyn.federation.protocol.ErrorCode` and a reason built from public values
only; anything unexpected is ``SITE_FAILURE`` with no detail. Exception texts, which may
quote private cells or paths, never leave the site: they go to its local log by type only (an
OSError with its error number and the site's own path).
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp

from fedsyn.client.audit_events import CHARGED, REQUEST_REFUSED, UPDATE_SENT
from fedsyn.client.policy import PolicyError, SitePolicy
from fedsyn.client.site import PolicyRefusal, Site, SiteRefusal, note_refusal
from fedsyn.data.schema import SchemaError
from fedsyn.errors import os_error_said, where_it_failed
from fedsyn.federation import protocol
from fedsyn.logs import about, known
from fedsyn.privacy.accounting import LedgerError, PrivacyEvent
from fedsyn.privacy.marginals import Marginals

log = logging.getLogger("fedsyn.client")
ErrorCode = protocol.ErrorCode

PolicyResolver = Callable[[Context], SitePolicy]
Instructions = TypeVar("Instructions", protocol.MarginalsQuery, protocol.PairTablesQuery, protocol.TrainInstructions)


def policy_from_node_config(context: Context) -> SitePolicy:
    """Deployment: the SuperNode is started with ``--node-config 'policy="/etc/fedsyn/site.json"'``."""
    if "policy" not in context.node_config:
        raise PolicyRefusal("this node was started without node-config 'policy' (path to the site policy file)",
                            ErrorCode.SITE_FAILURE)
    policy = SitePolicy.load(str(context.node_config["policy"]))
    problem = policy.deployment_problem()
    if problem is not None:
        raise PolicyRefusal(problem)
    return policy


def _hold_to_quantum(started: float, quantum: float, state: Path) -> None:
    """Hold a reply until the next whole multiple of ``quantum`` seconds since its request came
    (at least one): how long the site took, which grows with its rows even for a request that
    costs almost no epsilon (round 0 at noise 1e5: 22 ms at 2,000 rows, 312 ms at 64,000;
    fourth review, F2), is then seen only to the quantum. Timing is a channel differential
    privacy does not cover; this bounds it. 0: off.

    A reply that outlasted its quantum is said to the site's operator (:func:`_say_outlasted`);
    the hold is measured after that, so the saying takes none of the time it reveals."""
    if quantum <= 0:
        return
    if time.monotonic() - started > quantum:
        _say_outlasted(quantum, state)
    elapsed = time.monotonic() - started
    time.sleep(max(1, math.ceil(elapsed / quantum)) * quantum - elapsed)


OUTLASTED_QUANTUM = "reply-outlasted-quantum"  # in the site's state folder: the quantum last said


def _say_outlasted(quantum: float, state: Path) -> None:
    """Warn, once per quantum setting, that a reply took longer than the quantum: a coordinator
    that varies the work it asks for finds where replies cross into the next quantum, and that
    point moves with the rows read (ninth review, F1). Once per *setting*, kept in the site's
    state folder: each reply runs in a process of its own, and said once per process it was said
    on every reply (helper-98)."""
    said, setting = state / OUTLASTED_QUANTUM, f"{quantum:g}"
    try:
        if said.is_file() and said.read_text() == setting:
            return
        said.write_text(setting)
    except (OSError, ValueError):
        pass  # a read-only state folder, a marker not of its writing: said every time rather than never
    log.warning("a reply took longer than one quantum (reply_quantum_seconds %g): its time says something of "
                "the extract's size; raise reply_quantum_seconds above the longest reply, or lower the "
                "policy's request limits", quantum)  # how long it took is what the quantum hides: not logged


def _record_refusal(site: Site, message: Message, refusal: SiteRefusal) -> None:
    """The refusal in the site's audit trail: once per message type and code between charges,
    whatever its reason says (the first one's, its numbers left out), so that asking again,
    with any numbers or any text the coordinator chose, cannot grow the trail: a coordinator
    that varied a quoted value grew it by a line a request, charging nothing, and filled the
    disk towards the free-space refusal (helper-88; the site's log line keeps each reason,
    bounded). A trail that cannot be written (a
    read-only or full disk) is logged here and the refusal still goes out as itself: raised,
    Flower sent the OSError's text, a path and all, to the coordinator, and the reply skipped
    its hold (helper-84). The newest refusal is kept beside the ledger too (:func:`note_refusal`),
    for ``fedsyn client status``."""
    try:
        site.trail.append_unless_repeated(REQUEST_REFUSED, since=CHARGED, same=("message_type", "code"),
                                          message_type=message.metadata.message_type, code=refusal.code.name,
                                          reason=re.sub(r"\d+(\.\d+)?(e[+-]?\d+)?", "#", refusal.public_reason))
    except Exception as exc:  # noqa: BLE001 - a read-only disk, a full one, a corrupt last line: said locally
        log.error("the refusal could not be written to the audit trail (%s%s)", type(exc).__name__, os_error_said(exc))
    note_refusal(site.policy.ledger, message.metadata.message_type, refusal.code.name)


def _error_reply(message: Message, code: ErrorCode, public_text: str) -> Message:
    return Message(error=Error(code=int(code), reason=protocol.error_reason(code, public_text)), reply_to=message)


def _decode_marginals(content: RecordDict) -> Marginals:
    return Marginals(dict(protocol.from_array_record(content.array_records[protocol.MARGINALS])))


@contextmanager
def _coordinator_instructions() -> Iterator[None]:
    """Decode the coordinator's instructions: a malformed field is a refusal, never a crash."""
    try:
        yield
    except (KeyError, TypeError, ValueError, OverflowError, json.JSONDecodeError) as exc:
        raise PolicyRefusal(f"the coordinator's instructions are malformed ({type(exc).__name__})",
                            ErrorCode.MALFORMED_REQUEST) from None


def _instructions(kind: type[Instructions], config: ConfigRecord) -> Instructions:
    """The coordinator's instructions of ``kind``; malformed ones are refused, saying which value."""
    try:
        return kind.from_record(config)
    except protocol.ReplyError as exc:  # its text names instruction values only: public
        raise PolicyRefusal(str(exc), ErrorCode.MALFORMED_REQUEST) from None


def _decode_request(config: ConfigRecord) -> protocol.TrainInstructions:
    return _instructions(protocol.TrainInstructions, config)


def _privacy_record(site: Site, event: PrivacyEvent) -> ConfigRecord:
    return protocol.event_record(event, site.ledger.epsilon(), site.ledger.delta, site.policy.site_id)


def make_client_app(resolve_policy: PolicyResolver = policy_from_node_config) -> ClientApp:
    app = ClientApp()

    def guarded(handler: Callable[[Message, Site], RecordDict]) -> Callable[[Message, Context], Message]:
        def scoped(message: Message, context: Context) -> Message:
            with about():  # this message's lines carry its site, run and round (logs.known)
                return run(message, context)

        def run(message: Message, context: Context) -> Message:
            started = time.monotonic()
            site: Site | None = None
            answer: RecordDict | tuple[ErrorCode, str]
            try:
                site = Site(resolve_policy(context))
                known(site=site.policy.site_id)
                answer = handler(message, site)
            except SiteRefusal as exc:
                log.warning("refused (%s): %s", exc.code.name, exc.public_reason)
                if site is not None:
                    _record_refusal(site, message, exc)
                answer = (exc.code, exc.public_reason)
            except LedgerError as exc:
                log.error("ledger unavailable: %s", exc)  # local log: names the site's own files
                answer = (ErrorCode.LEDGER_UNAVAILABLE, "the site's privacy ledger is missing, corrupt or inconsistent "
                          "with its audit trail; the site spends nothing until its operator restores it")
            except (PolicyError, SchemaError) as exc:
                log.error("site configuration unusable: %s", type(exc).__name__)
                answer = (ErrorCode.POLICY_REFUSED, "the site's policy or schema file is invalid; its operator sees "
                          "the details locally")
            except Exception as exc:  # noqa: BLE001 - whatever it was, its text may hold private values
                # The site's own log gets where it failed (and, for its own files, which and why); the
                # reply gets a fixed text.
                log.error("request failed with %s%s\n%s", type(exc).__name__, os_error_said(exc), where_it_failed(exc))
                answer = (ErrorCode.SITE_FAILURE, "unexpected failure at the site")
            if site is not None:
                _hold_to_quantum(started, site.policy.reply_quantum_seconds, site.policy.ledger.parent)
            # The reply is made only now: Flower stamps a message's created_at, and its ttl, when
            # it is made, and both reach the coordinator (the fifth review's F1: made before the
            # hold, they told it how long the site worked, to the millisecond).
            if isinstance(answer, RecordDict):
                return Message(content=answer, reply_to=message)
            return _error_reply(message, *answer)
        return scoped

    def marginals(message: Message, site: Site) -> RecordDict:
        query = _instructions(protocol.MarginalsQuery, message.content.config_records[protocol.CONFIG])
        known(run=query.run_id or None, round=0)
        released, event = site.release_marginals(query.noise_multiplier, query.epsilon, query.schema_sha256,
                                                 query.run_id, query.pairs_share, query.sites)
        return RecordDict({
            protocol.MARGINALS: protocol.to_array_record(released.arrays),
            protocol.PRIVACY: _privacy_record(site, event),
        })

    def pair_tables(message: Message, site: Site) -> RecordDict:
        query = _instructions(protocol.PairTablesQuery, message.content.config_records[protocol.CONFIG])
        known(run=query.run_id or None, round=0)
        tables, event = site.release_pair_tables(query)
        return RecordDict({
            protocol.PAIR_TABLES: protocol.to_array_record(tables),
            protocol.PRIVACY: _privacy_record(site, event),
        })

    def budget(_: Message, site: Site) -> RecordDict:
        return RecordDict({protocol.BUDGET: protocol.budget_record(site.budget(), site.policy.site_id)})

    def train(message: Message, site: Site) -> RecordDict:
        content = message.content
        request = _decode_request(content.config_records[protocol.CONFIG])
        known(run=request.run_id or None, round=request.round)
        with _coordinator_instructions():
            arrays = protocol.from_array_record(content.array_records[protocol.ARRAYS])
            marginals = _decode_marginals(content)
            per_slot = ([Marginals(dict(tables)) for tables in
                         protocol.slot_marginals_from_record(content.array_records[protocol.SLOT_MARGINALS])]
                        if protocol.SLOT_MARGINALS in content.array_records else None)
        updated, metrics, event = site.train(request, arrays, marginals, per_slot)
        spent = site.ledger.epsilon()
        log.info("round %d: update handed to the SuperNode to send, epsilon now %.4f", request.round, spent,
                 extra={"fedsyn": {"event": UPDATE_SENT, "site": site.policy.site_id, "round": request.round,
                                   "epsilon_spent": spent}})
        return RecordDict({
            protocol.ARRAYS: protocol.to_array_record(updated),
            protocol.METRICS: protocol.metrics_record(metrics),
            protocol.PRIVACY: _privacy_record(site, event),
        })

    app.query("marginals")(guarded(marginals))
    app.query("pair_tables")(guarded(pair_tables))
    app.query("budget")(guarded(budget))
    app.train()(guarded(train))
    return app

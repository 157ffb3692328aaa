"""What a hospital does when the coordinator asks: the privacy guard and local DP training.

Every request is checked in full before anything is spent: the site policy, the schema
the coordinator uses, the site's own extract and the global model's shapes. Only then is
the cost charged to the on-disk ledger, under its lock, and only then does the mechanism
run, so a refusal costs nothing and a crash can only over-count, never forget.

Randomness: an unseeded site (the default) draws every mechanism's noise and Poisson batches
from operating-system entropy. A seeded site keys each mechanism run's stream by the seed,
its ledger's random nonce (new with every ledger and every reset) and the position the
charge took in the ledger, so it is reproducible for whoever holds the seed and the ledger,
yet never reuses noise or a batch across rounds, requests, runs or ledgers. The coordinator
never chooses, and no message carries, a site's randomness.

Refusals carry an :class:`~fedsyn.federation.protocol.ErrorCode` and a text built from public
values only (policy limits, the request's parameters, the site's epsilon claim). Details
that might describe private rows stay in the site's local log and tools.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fedsyn.client.audit_events import (
    BUDGET_REPORTED,
    CHARGED,
    LEDGER_CREATED,
    LEDGER_MOVED,
    LEDGER_RESET,
    LEDGER_STARTS,
    MARGINALS_SENT,
    PAIR_TABLES_SENT,
    REPLY_REPLAYED,
    REQUEST_REFUSED,
    UPDATE_SENT,
    UPDATE_WITHHELD,
)
from fedsyn.client.policy import SitePolicy
from fedsyn.client.replies import PAIR_TABLES_STAGE, ReplyStore, request_digest
from fedsyn.data.schema import Schema
from fedsyn.data.tables import DataFileError, read_table
from fedsyn.data.validation import DataValidationError, Screening, screen_records
from fedsyn.errors import PrivacyRefusal, public_text, where_it_failed
from fedsyn.federation.protocol import MAX_SITES, ErrorCode, PairTablesQuery, TrainInstructions, schema_fingerprint
from fedsyn.files import write_atomically
from fedsyn.model.config import GANConfig
from fedsyn.model.encoder import TableEncoder
from fedsyn.model.training import GANTrainer, padded
from fedsyn.privacy.accounting import (
    BudgetExceededError,
    LedgerError,
    PrivacyEvent,
    PrivacyLedger,
    RequestCapExceededError,
    calibrate_noise_multiplier,
    ledger_lock,
)
from fedsyn.privacy.budget import (
    DP_SGD,
    MAX_NOISE_MULTIPLIER,
    SiteBudget,
    delta_fits,
    is_budget,
    is_noise_multiplier,
    is_pairs_share,
    pairs_allowed,
)
from fedsyn.privacy.marginals import (
    Marginals,
    check_slot_tables,
    check_summed_tables,
    first_release_event,
    marginals_event,
    noisy_marginals,
    received_marginals,
    table_shape,
)
from fedsyn.privacy.pairs import check_pair_request, measure_pair_tables, pair_shape
from fedsyn.privacy.randomness import mechanism_stream, numpy_generator, torch_generator
from fedsyn.trust.audit import AuditLog

log = logging.getLogger("fedsyn.client")

WITHHELD = "withheld"  # the stored marker of a round whose update was withheld


class SiteRefusal(PrivacyRefusal, RuntimeError):
    """The site will not run the request; ``public_reason`` is safe to send to the coordinator."""

    def __init__(self, code: ErrorCode, public_reason: str):
        public_reason = public_text(public_reason)
        super().__init__(public_reason)
        self.code = code
        self.public_reason = public_reason


class PolicyRefusal(SiteRefusal):
    """The coordinator asked for something this site's policy does not allow."""

    def __init__(self, public_reason: str, code: ErrorCode = ErrorCode.POLICY_REFUSED):
        super().__init__(code, public_reason)


def initialise_ledger(policy: SitePolicy, reset_reason: str | None = None,
                      stream_nonce: str | None = None) -> PrivacyLedger:
    """Create the site's empty ledger: the operator's explicit, audited act.

    Refuses when the site's audit trail shows privacy already charged since the last
    (re)start of the ledger, or when anything beside the ledger shows that it was spent from
    (:func:`spending_traces`: stored replies, a replaced ledger, the ledger's lock file), unless
    ``reset_reason`` says why starting again at epsilon 0 is right (e.g. a new extract of other
    patients); the reason is kept in the trail. Deleting the ledger and its trail together is
    therefore no silent way back to epsilon 0. The new ledger gets a fresh random stream nonce
    unless a seeded simulation passes one. A file the site cannot write is named with the
    operating system's reason (a path on the site's own disk, never sent anywhere).
    """
    try:
        return _initialise_ledger(policy, reset_reason, stream_nonce)
    except OSError as exc:
        if exc.errno is None or not exc.strerror:
            raise
        where = exc.filename or policy.ledger
        raise LedgerError(f"cannot write {where}: {exc.strerror}. The user running fedsyn needs write access to "
                          f"{policy.ledger.parent} (the ledger, its lock and stored replies) and to "
                          f"{policy.audit_trail}") from None


def _initialise_ledger(policy: SitePolicy, reset_reason: str | None, stream_nonce: str | None) -> PrivacyLedger:
    trail = AuditLog(policy.audit_trail)
    charged = charges_in_trail(policy.audit_trail)
    if charged and reset_reason is None:
        raise LedgerError(
            f"the audit trail {policy.audit_trail} records {charged} privacy charge(s) for this site: a new, empty "
            "ledger would forget them. Restore the ledger from backup, or give a reset reason if the extract now "
            "holds other patients")
    traces = spending_traces(policy.ledger) if not policy.ledger.exists() else []
    if traces and reset_reason is None:
        raise LedgerError(
            f"no ledger at {policy.ledger}, but this site has spent privacy before: {'; '.join(traces)}. A new, "
            "empty ledger would start again at epsilon 0 and forget it. Restore the ledger and its audit trail "
            f"{policy.audit_trail} from backup, or give --reset-reason if the extract now holds other patients")
    if reset_reason is not None and policy.ledger.exists():
        policy.ledger.rename(_free_name(policy.ledger.with_name(policy.ledger.name + ".replaced")))
    ledger = PrivacyLedger.create(policy.ledger, policy.delta, policy.accountant, protects=str(policy.data.resolve()),
                                  stream_nonce=stream_nonce)
    if reset_reason is None:
        trail.append(LEDGER_CREATED, ledger=str(policy.ledger), protects=ledger.protects)
    else:
        trail.append(LEDGER_RESET, ledger=str(policy.ledger), protects=ledger.protects, reason=reset_reason,
                     charges_forgotten=charged, traces=traces)
    return ledger


def move_ledger(policy: SitePolicy) -> tuple[str, str]:
    """Point the site's ledger at the extract its policy now names (the same patients, moved), in
    the trail too; return the extract it protected before and the one it protects now. Refused
    where the new extract is missing: a ledger follows an extract, it never waits for one."""
    if not policy.data.is_file():
        raise LedgerError(f"the policy's extract {policy.data} does not exist: move the extract first, then the "
                          "ledger")
    ledger = PrivacyLedger.load(policy.ledger)
    now = str(policy.data.resolve())
    before = ledger.move_to(now)
    AuditLog(policy.audit_trail).append(LEDGER_MOVED, ledger=str(policy.ledger), protected=before, protects=now)
    return before, now


def replies_folder(ledger: Path) -> Path:
    """Where a site keeps its stored replies (:class:`ReplyStore`): ``<ledger stem>-replies`` beside it."""
    return ledger.with_name(ledger.stem + "-replies")


def last_refusal_path(ledger: Path) -> Path:
    """Where a site keeps its newest refusal (:func:`note_refusal`): ``<ledger stem>-last-refusal.json``
    beside the ledger, tied to it as its stored replies are."""
    return ledger.with_name(ledger.stem + "-last-refusal.json")


def note_refusal(ledger: Path, message_type: str, code: str) -> None:
    """Keep the newest refusal beside ``ledger``, one small file rewritten each time, for
    ``fedsyn client status``: the trail records a refusal only the first time between two
    charges (:func:`fedsyn.client.app._record_refusal`), so its newest entry was the first refusal
    since the last charge, shown as the last (operator finding L6). Its size does not grow with
    requests, and it holds no reason (a coordinator's text). Written as the ledger is (owner
    only, atomically: two refusals at once leave one whole note). A folder that cannot take it is
    left as it is: the site's log names every refusal."""
    from datetime import UTC, datetime

    note = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), "event": REQUEST_REFUSED,
            "message_type": public_text(message_type), "code": code}
    try:
        write_atomically(last_refusal_path(ledger), lambda out: out.write(json.dumps(note).encode()))
    except OSError:
        pass


def last_refusal(ledger: Path) -> dict[str, object] | None:
    """The refusal :func:`note_refusal` kept beside ``ledger``; None where there is none or it
    cannot be read."""
    try:
        note = json.loads(last_refusal_path(ledger).read_text())
    except (OSError, ValueError):
        return None
    return note if isinstance(note, dict) else None


def spending_traces(ledger: Path) -> list[str]:
    """What beside ``ledger`` shows that privacy was spent from a ledger there: replies stored
    after a charge, a ledger set aside by an earlier reset, the lock only a charge takes."""
    traces = []
    stored = sorted(replies_folder(ledger).glob("*-round-*.npz")) if replies_folder(ledger).is_dir() else []
    if stored:
        runs = sorted({path.name.rsplit("-round-", 1)[0] for path in stored})
        traces.append(f"{len(stored)} stored repl{'y' if len(stored) == 1 else 'ies'} of {len(runs)} run(s) in "
                      f"{replies_folder(ledger)}, each sent after a charge")
    replaced = sorted(ledger.parent.glob(ledger.name + ".replaced*")) if ledger.parent.is_dir() else []
    traces += [f"an earlier ledger {path}" for path in replaced]
    lock = ledger_lock(ledger)
    if lock.exists():
        traces.append(f"its lock file {lock}, which only a charge creates")
    return traces


def _free_name(path: Path) -> Path:
    """``path``, or ``path-<UTC time>`` when an earlier reset already left a file there."""
    if not path.exists():
        return path
    from datetime import UTC, datetime

    return path.with_name(f"{path.name}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S.%fZ')}")


def charges_in_trail(trail_path: Path) -> int:
    """How many charges the ledger must hold by the site's trail since the ledger last
    (re)started: the highest ledger size a charge recorded, or the charges recorded, whichever
    is more (two charges that read the same ledger both record the same size: helper-101 L1)."""
    if not trail_path.exists():
        return 0
    highest = charges = 0
    for line in trail_path.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("event") in LEDGER_STARTS:
            highest = charges = 0
        elif entry.get("event") == CHARGED:
            highest, charges = max(highest, int(entry.get("ledger_events", 0))), charges + 1
    return max(highest, charges)


class Site:
    """One hospital's side of the federation, bound to its policy and ledger."""

    def __init__(self, policy: SitePolicy):
        self.policy = policy
        self.schema = Schema.load(policy.schema_path)
        self.schema.require_reviewed(policy.allow_unreviewed_schema)
        self.trail = AuditLog(policy.audit_trail)
        self.replies = ReplyStore(replies_folder(policy.ledger))
        try:
            self.ledger = PrivacyLedger.open(policy.ledger, policy.delta, policy.accountant,
                                              protects=str(policy.data.resolve()))
            recorded = charges_in_trail(policy.audit_trail)
        except (json.JSONDecodeError, ValueError) as exc:
            raise LedgerError(f"the audit trail {policy.audit_trail} cannot be read ({type(exc).__name__})") from None
        # A seed only counts together with the ledger's nonce: a ledger from before nonces
        # gets operating-system entropy rather than streams another ledger may have used.
        self.seed = policy.seed if self.ledger.stream_nonce is not None else None
        if len(self.ledger.events) < recorded:
            raise LedgerError(
                f"ledger {policy.ledger} holds {len(self.ledger.events)} event(s) but the audit trail "
                f"{policy.audit_trail} records {recorded} charges: the ledger was reset or replaced (restore it "
                "from backup), or a charge was lost (its lock file deleted under it: add the trail's missing "
                "privacy_charged events to it, docs/site.md); the site refuses to spend until the two agree")
        proven = self.replies.charges_proven(self.ledger.stream_nonce)
        if len(self.ledger.events) < proven:
            # Ledger and trail restored together from an older backup: both agree, yet the stored
            # answers prove later charges. Spending on would under-count, and a seeded site would
            # draw the same noise again at the same ledger positions.
            raise LedgerError(
                f"ledger {policy.ledger} holds {len(self.ledger.events)} event(s) but this site's stored answers "
                f"({self.replies.directory}) prove {proven} charges: the ledger and its trail were restored from a "
                "backup older than the last charge. Restore the latest ledger and trail; the site refuses to spend "
                "until they hold every charge")

    # -- checks that run before anything is charged ----------------------------------------

    def load_data(self) -> pd.DataFrame:
        """The extract as the mechanisms read it, its out-of-domain records handled as the
        policy's ``out_of_domain`` says (raises with a report naming rows for a file-level
        problem, or for any problem under ``refuse``). What screening changed is logged here,
        by column and count, and never sent."""
        return self.screened().frame

    def screened(self) -> Screening:
        """:meth:`load_data`'s screening whole: with its notes (bounds that are the extract's own
        extremes), which the site's operator hears once, when the site starts."""
        screening = screen_records(read_table(self.policy.data, self.schema), self.schema, self.policy.out_of_domain,
                                   source=str(self.policy.data))
        if screening.problems:
            # Columns and kinds, never counts: a log line goes to a collector, and "(1)" beside a
            # stay over 365 days is one patient (ninth review, F2); `fedsyn validate` counts locally.
            log.warning("extract %s: out-of-domain records handled (policy out_of_domain=%s) in %s. "
                        "`fedsyn validate` names the rows", self.policy.data, self.policy.out_of_domain,
                        "; ".join(problem.named() for problem in screening.problems))
        return screening

    def _private_rows(self) -> pd.DataFrame:
        """The extract for a mechanism; a bad extract is a refusal whose text holds no value."""
        try:
            frame = self.load_data()
        except (DataFileError, DataValidationError) as exc:
            if not self.policy.data.exists():  # said plainly: helper-98's operator read only 'DataFileError'
                log.error("the extract %s does not exist: restore it, or point the site policy's data at it",
                          self.policy.data)
            else:
                log.error("the extract %s cannot be used (%s): run `fedsyn validate` here for the details",
                          self.policy.data, type(exc).__name__)
            raise SiteRefusal(ErrorCode.DATA_INVALID, "the site's extract does not pass validation against the "
                              "shared schema; the site operator sees the details locally") from None
        refusal = self.row_count_refusal(len(frame))
        if refusal is not None:
            raise refusal
        return frame

    def row_count_refusal(self, rows: int) -> PolicyRefusal | None:
        """The refusal, if any, of an extract of ``rows`` records: more than the policy's
        ``max_rows``, or (without ``max_rows``) at least 1/δ. Each flips at one record, a bit
        outside the DP guarantee, so ``fedsyn client start`` checks both before joining and a
        request meets one only when the extract grew since. With ``max_rows`` the δ check is
        the policy's own (δ below 1/``max_rows``), public values only (helper-90 F2)."""
        if self.policy.max_rows is None and not delta_fits(self.policy.delta, rows):
            return PolicyRefusal("the site's delta is not below 1/n for its extract; the site operator must lower "
                                 "delta in its policy")
        if self.policy.max_rows is not None and rows > self.policy.max_rows:
            log.error("the extract %s holds more rows than the policy's max_rows %d: raise max_rows (a public "
                      "upper bound, say a round number above the extract)", self.policy.data, self.policy.max_rows)
            return PolicyRefusal("the site's extract is larger than its policy's max_rows; the site operator must "
                                 "raise max_rows")
        return None

    def _check_encodable(self, frame: pd.DataFrame) -> None:
        """Encode the extract once as training will (the encoding's shape depends on the schema
        only), so a failure costs nothing and is located in the site's own log."""
        try:
            TableEncoder(self.schema).encode(frame)
        except Exception as exc:  # noqa: BLE001 - whatever failed, its text may quote a cell
            log.error("the extract cannot be encoded with the schema\n%s", where_it_failed(exc))
            raise SiteRefusal(ErrorCode.SITE_FAILURE, "the site cannot encode its extract with the shared schema; "
                              "its operator sees where locally") from None

    def _check_epsilon(self, requested: float) -> float:
        if requested > self.policy.max_epsilon:
            raise PolicyRefusal(
                f"site '{self.policy.site_id}' allows at most epsilon={self.policy.max_epsilon} in total; "
                f"the coordinator asked for {requested:.4g} (the most this run may bring its ledger to, planned from "
                "the max_epsilon the site gave before round 0: where the site lowered it since, a new run plans "
                "with the new one)", ErrorCode.BUDGET_EXHAUSTED)
        return requested

    @staticmethod
    def _check_slot(request: TrainInstructions) -> None:
        if request.gan_config.site_slots and request.site_slot is None:
            raise PolicyRefusal("the model has site slots but the instructions name none for this site",
                                ErrorCode.MALFORMED_REQUEST)

    def _check_limits(self, request: TrainInstructions) -> None:
        """The request's model and settings against the site's own limits (before any charge)."""
        problems = self.policy.limits.problems(request.gan_config, request.sample_rate, request.local_steps)
        if problems:
            raise PolicyRefusal(f"the request exceeds this site's limits: {'; '.join(problems)}")

    def _check_schema(self, fingerprint: str) -> None:
        if fingerprint != schema_fingerprint(self.schema):
            raise SiteRefusal(ErrorCode.SCHEMA_MISMATCH, "the coordinator's schema differs from this site's "
                              "(SHA-256 mismatch); agree on one schema file before training, and run the same "
                              "fedsyn version (the fingerprint covers how numeric columns are binned)")

    def _check_affordable(self, event: PrivacyEvent, budget: float) -> None:
        """Refuse ``event`` if the ledger cannot afford it, before any row is read: a refusal
        that reads the extract first takes longer the more rows it has, so a coordinator could
        learn the row count, at no cost, by timing refusals. :meth:`_charge` checks again
        under the ledger's lock."""
        with _refused_over_budget(self.policy.site_id):
            self.ledger.check(event, budget, self.policy.max_epsilon_per_request)

    def _check_room(self, answer_bytes: int) -> None:
        """Refuse, before anything is charged, a request whose answer this site could not store.
        Charged first, a full disk lost the stored answer, and the same request asked again after
        a restart was charged again (a training round's epsilon lost for nothing).

        The test is against the policy's fixed ``disk_reserve_mib``, never against the answer's
        size: the extract usually shares the disk, so free space moves with the extract's bytes,
        and a threshold the request set (a padded model) let a coordinator binary-search free
        space to the byte (helper-82's review). The stored answers count as free: their sizes
        are the coordinator's choice too, and filling the store by chosen amounts moved the
        same threshold (helper-85). What it learns is one bit, whether less than the reserve is
        free besides them (:attr:`ErrorCode.NO_ROOM`: nothing charged, asked again next round);
        an answer that, with the copy written beside it, exceeds the reserve is a policy refusal,
        decided by the request and the policy alone. The amounts stay in the local log. Space
        can still run out between this check and the write (another process, a long round, a
        store grown large).

        The audit trail is opened for appending first: the ledger is saved before the trail
        records the charge, so a trail that could not be written (read-only, immutable) left a
        charge in the ledger that no trail entry held, and a ledger rebuilt from the trail would
        have lost it (helper-108 M3). Its error goes to the site's log as any failure's does."""
        with self.policy.audit_trail.open("a"):
            pass
        reserve = self.policy.disk_reserve_mib * 2**20
        if 2 * answer_bytes > reserve:
            raise PolicyRefusal(f"the answer ({answer_bytes / 2**20:.1f} MiB) and the copy written beside it exceed "
                                f"this site's disk_reserve_mib ({self.policy.disk_reserve_mib}): ask for a smaller "
                                "model, or the site's operator raises the reserve")
        free = self.free_bytes()
        if free < reserve:
            log.error("%.0f MiB free on the disk of %s (counting its stored answers), below the policy's "
                      "disk_reserve_mib %d: free some space; nothing was charged", free / 2**20,
                      self.policy.ledger.parent, self.policy.disk_reserve_mib)
            raise SiteRefusal(ErrorCode.NO_ROOM, "the site has less free disk than its reserve; nothing was charged "
                              "(its operator's log says how much)")

    def free_bytes(self) -> int:
        """The free space a round may use: the least free on the disks of the ledger and the stored
        replies, the stored replies counted as free (see :meth:`_check_room`)."""
        disks = {self.policy.ledger.parent, self.replies.directory if self.replies.directory.is_dir()
                 else self.policy.ledger.parent}
        return min(shutil.disk_usage(path).free for path in disks) + self.replies.stored_bytes()

    def _charge(self, event: PrivacyEvent, budget: float) -> int:
        """Charge ``event`` under the ledger's lock; return its ledger position (its stream key)."""
        with _refused_over_budget(self.policy.site_id):
            position = self.ledger.charge(event, budget, self.policy.max_epsilon_per_request)
        spent = self.ledger.epsilon()
        extract = self._extract_changed(within_run=(event.round or 0) > 0)
        self.trail.append(CHARGED, privacy=asdict(event), ledger_events=position + 1, epsilon_spent=spent,
                          extract=extract)
        log.info("privacy charged: %s round %s, epsilon now %.4f", event.mechanism, event.round, spent,
                 extra={"fedsyn": {"event": CHARGED, "site": self.policy.site_id, "round": event.round,
                                   "mechanism": event.mechanism, "epsilon_spent": spent}})
        return position

    def _extract_changed(self, within_run: bool) -> str:
        """The extract file's size and modification time (local: the trail never leaves the
        site; the size tells about how many rows it has, so a trail shown to an auditor says
        that too), said in the site's log when they differ from the last charge's ``within_run``
        (a training round: a new run's round 0 may well read a new export, helper-105 L2). A
        run's round-0 tables describe the extract they were measured on; training on a replaced
        one went unsaid (helper-104 M7)."""
        try:
            stat = self.policy.data.stat()
        except OSError:
            return ""
        now = f"{stat.st_size}:{stat.st_mtime_ns}"
        try:  # said after the charge: nothing here may stop the answer it paid for
            last = next((str(entry.get("extract", "")) for entry in reversed(self.trail.entries())
                         if entry.get("event") == CHARGED), "")
        except (OSError, ValueError):
            return now
        if within_run and last and last != now:
            log.warning("the extract %s changed since this site's last charge: a run under way measured its round-0 "
                        "tables on the earlier one and now trains on this one. If that is not meant, stop the run "
                        "and start a new one once the extract is final", self.policy.data,
                        extra={"fedsyn": {"event": "extract_changed", "site": self.policy.site_id}})
        return now

    def budget(self) -> SiteBudget:
        """What this site has spent and may spend, for the coordinator's plan: read from the ledger
        and the policy only (no row is read), so it costs nothing and is declared public."""
        budget = SiteBudget(self.ledger.epsilon(), self.policy.max_epsilon, self.policy.delta,
                            self.policy.max_epsilon_per_request)
        self.trail.append_unless_repeated(BUDGET_REPORTED, since=CHARGED, epsilon_spent=budget.spent,
                                          max_epsilon=budget.max_epsilon,
                                          max_epsilon_per_request=budget.max_epsilon_per_request)
        return budget

    # -- mechanisms ------------------------------------------------------------------------

    def release_marginals(self, noise_multiplier: float, epsilon: float, schema_sha256: str, run_id: str = "",
                          pairs_share: float = 0.0, sites: int = 1) -> tuple[Marginals, PrivacyEvent]:
        """Round 0's first release: the noisy outcome tables and, with ``pairs_share``, this
        site's votes for the pairs the ``sites`` sites will measure together (none on a PRV
        ledger, which cannot carry their selection). The pair tables are the second release
        (:meth:`release_pair_tables`); the two cost one Gaussian mechanism with
        ``noise_multiplier`` whatever the share."""
        if not (is_noise_multiplier(noise_multiplier) and is_budget(epsilon) and is_pairs_share(pairs_share)
                and isinstance(sites, int) and 1 <= sites <= MAX_SITES):
            raise PolicyRefusal(f"noise multiplier {noise_multiplier} (at most {MAX_NOISE_MULTIPLIER:g}) and "
                                f"epsilon {epsilon} must be positive and finite, pairs share {pairs_share} 0 or "
                                f"in [0.01, 1), sites {sites} in 1..{MAX_SITES}", ErrorCode.MALFORMED_REQUEST)
        self._check_schema(schema_sha256)
        pairs_share = pairs_share if pairs_allowed(self.ledger.accountant) else 0.0
        digest = request_digest({"noise_multiplier": noise_multiplier, "epsilon": epsilon, "schema": schema_sha256,
                                 "pairs_share": pairs_share, "sites": sites})
        cells = sum(math.prod(table_shape(self.schema, column)) for column in self.schema.columns)
        arrays, event = self._release_round_zero(
            run_id, digest, "", epsilon, first_release_event(self.schema, noise_multiplier, pairs_share, round_=0),
            lambda frame, rng: noisy_marginals(frame, self.schema, noise_multiplier, rng, pairs_share, sites).arrays,
            MARGINALS_SENT, answer_bytes=8 * cells)
        return received_marginals(arrays, self.schema, noise_multiplier, pairs_share), event  # the std its query asked

    def release_pair_tables(self, query: PairTablesQuery) -> tuple[dict[str, np.ndarray], PrivacyEvent]:
        """Round 0's second release: the tables of the pairs the sites chose, each with Gaussian
        noise (:func:`fedsyn.privacy.pairs.measure_pair_tables`), one Gaussian mechanism with
        the query's multiplier. Every pair and group bound is checked against the schema before
        a row is read; whatever pairs a coordinator names, the noise is that of the charge."""
        if not (is_noise_multiplier(query.noise_multiplier) and is_budget(query.epsilon)):
            raise PolicyRefusal(f"noise multiplier {query.noise_multiplier} (at most {MAX_NOISE_MULTIPLIER:g}) and "
                                f"epsilon {query.epsilon} must be positive and finite", ErrorCode.MALFORMED_REQUEST)
        self._check_schema(query.schema_sha256)
        bounds = {name: np.asarray(values, dtype=float) for name, values in query.bounds.items()}
        try:
            check_pair_request(self.schema, list(query.pairs), bounds)
        except ValueError as exc:  # names schema columns and public bounds only
            raise PolicyRefusal(f"the pair tables asked for do not fit the schema: {exc}",
                                ErrorCode.MALFORMED_REQUEST) from None
        digest = request_digest({"noise_multiplier": query.noise_multiplier, "epsilon": query.epsilon,
                                 "schema": query.schema_sha256, "pairs": query.pairs, "bounds": query.bounds})
        return self._release_round_zero(
            query.run_id, digest, PAIR_TABLES_STAGE, query.epsilon, marginals_event(query.noise_multiplier, round_=0),
            lambda frame, rng: measure_pair_tables(frame, self.schema, list(query.pairs), bounds,
                                                   query.noise_multiplier, rng),
            PAIR_TABLES_SENT, answer_bytes=8 * sum(math.prod(pair_shape(self.schema, pair)) for pair in query.pairs))

    def _release_round_zero(self, run_id: str, digest: str, stage: str, epsilon: float, event: PrivacyEvent,
                            release: Callable[[pd.DataFrame, np.random.Generator], dict[str, np.ndarray]],
                            sent: str, answer_bytes: int) -> tuple[dict[str, np.ndarray], PrivacyEvent]:
        """Either round-0 release once its request was checked: the stored answer to the same
        request, else the budget checked before any row is read (:meth:`_check_affordable`), the
        rows proven encodable (training encodes them every round) before anything is paid, the
        ledger charged before ``release`` computes the answer from the rows and the charge's own
        stream, the answer stored (under ``stage`` of round 0) and the trail told (``sent``)."""
        replayed = self._replayed(run_id, 0, digest, stage)
        if replayed is not None:
            return replayed[0], replayed[2]
        budget = self._check_epsilon(epsilon)
        self._check_affordable(event, budget)  # before any row is read: see _check_affordable
        self._check_room(answer_bytes)
        frame = self._private_rows()
        self._check_encodable(frame)
        position = self._charge(event, budget)  # before the release is computed
        arrays = release(frame, self._table_stream(event, position))
        self.replies.put(run_id, 0, digest, arrays, {}, event, (self.ledger.stream_nonce, position), stage)
        self.trail.append(sent, privacy=asdict(event), epsilon_spent=self.ledger.epsilon())
        return arrays, event

    def _table_stream(self, event: PrivacyEvent, position: int) -> np.random.Generator:
        """The random stream of a round-0 release charged at ``position`` of the ledger: a fresh
        one per charge (:mod:`fedsyn.privacy.randomness`)."""
        return numpy_generator(self.seed, self.ledger.stream_nonce, event.mechanism, position)

    def _replayed(self, run_id: str, round_: int, digest: str, stage: str = ""
                  ) -> tuple[dict[str, np.ndarray], dict[str, float], PrivacyEvent] | None:
        """This site's stored answer to exactly this request of this run, sent again at no cost."""
        if not run_id:
            return None
        stored = self.replies.get(run_id, round_, digest, self.ledger.stream_nonce, stage)
        if stored is not None:
            self.trail.append_unless_repeated(REPLY_REPLAYED, since=CHARGED, run=run_id, round=round_,
                                              privacy=asdict(stored[2]), epsilon_spent=self.ledger.epsilon())
            log.info("round %d of run %s asked again: the stored answer is sent, nothing is charged", round_, run_id,
                     extra={"fedsyn": {"event": REPLY_REPLAYED, "site": self.policy.site_id, "round": round_}})
        return stored

    def plan_noise(self, request: TrainInstructions) -> float:
        """Noise for this round: the coordinator's value if the policy allows it, else calibrated
        so that what is spent plus the rest of the plan fits the budget (stateless, so a
        restarted site recomputes the same value)."""
        budget = self._check_epsilon(request.epsilon)
        if request.noise_multiplier is not None:
            if request.noise_multiplier < self.policy.min_noise_multiplier:
                raise PolicyRefusal(
                    f"noise multiplier {request.noise_multiplier} is below this site's minimum "
                    f"{self.policy.min_noise_multiplier}")
            return request.noise_multiplier
        remaining = (request.total_rounds - request.round + 1) * request.local_steps
        with _refused_over_budget(self.policy.site_id):
            sigma = calibrate_noise_multiplier(budget, self.policy.delta, request.sample_rate, remaining,
                                               self.ledger.events, self.policy.accountant)
            cap = self.policy.max_epsilon_per_request
            if cap is not None:  # the site's own choice keeps within its own limit on one request
                sigma = max(sigma, calibrate_noise_multiplier(cap, self.policy.delta, request.sample_rate,
                                                              request.local_steps, (), self.policy.accountant))
        return max(sigma, self.policy.min_noise_multiplier)

    def train(self, request: TrainInstructions, arrays: dict[str, np.ndarray], marginals: Marginals,
              slot_marginals: list[Marginals] | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, float], PrivacyEvent]:
        """One round of local training. ``marginals`` (the sum over sites) define the shared
        encoding; ``slot_marginals`` (every site slot's round-0 tables, post-processing of DP outputs) say how
        the release draws its rows, and this site's own entry is what generated rows'
        conditions follow here, so they look like this site's rows."""
        self._check_schema(request.schema_sha256)
        self._check_limits(request)
        self._check_slot(request)
        tables = {f"marginals/{k}": v for k, v in marginals.tables.items()}
        for slot, slot_tables in enumerate(slot_marginals or []):
            tables.update({f"slot{slot}/{k}": v for k, v in slot_tables.arrays.items()})
        digest = request_digest(dict(request.to_record()), {**arrays, **tables})
        replayed = self._replayed(request.run_id, request.round, digest)
        if replayed is not None:
            if WITHHELD in replayed[1]:  # the same request again gets the same answer, at no cost
                raise _withheld()
            return replayed
        sigma = self.plan_noise(request)
        # Everything that can refuse without the rows first: a refusal that read them would take
        # longer the more rows there are, and a coordinator could time it for free.
        local_marginals = self._own_marginals(request, marginals, slot_marginals)
        trainer = self._trainer(request.gan_config, arrays, marginals, local_marginals, slot_marginals)
        event = PrivacyEvent(DP_SGD, sigma, request.sample_rate, request.local_steps, round=request.round)
        self._check_affordable(event, request.epsilon)
        self._check_room(sum(value.size for value in trainer.state_arrays().values())
                         * np.dtype(request.transport_dtype).itemsize)
        frame = self._private_rows()
        # The expected batch from the site's own noisy count (post-processing), else the config's batch size.
        expected_batch = None if local_marginals is None else max(1.0, request.sample_rate * local_marginals.total())
        data = padded(torch.as_tensor(trainer.encoder.encode(frame), device=trainer.device), self.policy.max_rows)
        position = self._charge(event, request.epsilon)  # before any step runs
        stream = torch_generator(self.seed, self.ledger.stream_nonce, event.mechanism, position, device=trainer.device)
        noise = mechanism_stream(self.seed, self.ledger.stream_nonce, event.mechanism, position)
        history = trainer.train(data, request.local_steps, request.sample_rate, sigma, slot=request.site_slot,
                                rng=stream, expected_batch=expected_batch, mechanism_rng=noise, real_rows=len(frame))
        metrics = {
            "discriminator_fake_loss": float(np.mean([h.discriminator for h in history])),
            "generator_loss": float(np.mean([h.generator for h in history])),
            "steps": float(len(history)),
        }
        with np.errstate(over="ignore"):  # beyond float16's range becomes inf, refused just below
            updated = {k: v.astype(request.transport_dtype) for k, v in trainer.state_arrays().items()}
        if not all(np.isfinite(v).all() for v in updated.values()) or not all(map(math.isfinite, metrics.values())):
            # Clipping is total, so no record made this non-finite: the model the coordinator sent
            # overflowed on generated rows or the transport's range, a function of the model and the
            # DP outputs only. A fixed reply says so; the charge stands (over-counted, never hidden).
            self.replies.put(request.run_id, request.round, digest, {}, {WITHHELD: 1.0}, event,
                             (self.ledger.stream_nonce, position))
            self.trail.append(UPDATE_WITHHELD, privacy=asdict(event), epsilon_spent=self.ledger.epsilon(),
                              reason="non-finite weights or losses after the local steps")
            raise _withheld()
        self.replies.put(request.run_id, request.round, digest, updated, metrics, event,
                         (self.ledger.stream_nonce, position))
        self.trail.append(UPDATE_SENT, privacy=asdict(event), epsilon_spent=self.ledger.epsilon(), metrics=metrics)
        return updated, metrics, event

    def _own_marginals(self, request: TrainInstructions, marginals: Marginals,
                       slot_marginals: list[Marginals] | None) -> Marginals | None:
        """This site's round-0 tables among every slot's, once the summed tables and the slots'
        are checked to fit the schema, one per slot (:func:`check_summed_tables`,
        :func:`check_slot_tables`), before any row is read or anything is spent."""
        if slot_marginals is not None and len(slot_marginals) != request.gan_config.site_slots:
            raise _model_misfit()
        try:
            if slot_marginals is None:
                check_summed_tables(self.schema, marginals)
                return None
            check_slot_tables(self.schema, marginals, slot_marginals)  # the summed tables' check included
        except ValueError:
            raise _model_misfit() from None
        return slot_marginals[request.site_slot] if slot_marginals and request.site_slot is not None else None

    def _trainer(self, config: GANConfig, arrays: dict[str, np.ndarray], marginals: Marginals,
                 local: Marginals | None, slot_marginals: list[Marginals] | None) -> GANTrainer:
        """The global model as sent, checked against this site's schema before anything is spent."""
        try:
            trainer = GANTrainer(TableEncoder(self.schema, marginals), config, device=self.policy.device,
                                 condition_marginals=local)
            if slot_marginals:
                trainer.set_release_slots([m.total() for m in slot_marginals], slot_marginals)
            trainer.load_state_arrays(arrays)
        except (IndexError, KeyError, RuntimeError, ValueError) as exc:
            log.warning("the global model does not fit this site's schema: %s", type(exc).__name__)
            raise _model_misfit() from None
        return trainer


@contextmanager
def _refused_over_budget(site_id: str) -> Iterator[None]:
    """The ledger's refusal as the coordinator hears it: over the site's budget (it has no more
    to spend on this run), or over what the site lets one request spend (a policy limit: the
    same work at more noise, or in smaller rounds, may pass)."""
    try:
        yield
    except RequestCapExceededError as exc:
        raise PolicyRefusal(f"site '{site_id}': {exc}") from None
    except BudgetExceededError as exc:
        raise PolicyRefusal(f"site '{site_id}': {exc}", ErrorCode.BUDGET_EXHAUSTED) from None


def _withheld() -> SiteRefusal:
    """The fixed answer for an update withheld because it became non-finite (see :meth:`Site.train`)."""
    return SiteRefusal(ErrorCode.SITE_FAILURE, "the global model's weights or losses became non-finite during the "
                       "local steps (it overflows on generated rows or beyond the transport precision); this round "
                       "was charged and nothing is sent")


def _model_misfit() -> SiteRefusal:
    """The refusal for a global model or marginals that do not have this site's schema's shapes."""
    return SiteRefusal(ErrorCode.MALFORMED_REQUEST, "the global model or marginals do not fit this site's schema "
                       "(array names or shapes differ)")

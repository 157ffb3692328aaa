"""The coordinator's run state, saved after every completed round so a restart continues the run.

After round 0 and after every training round the coordinator writes ``state.pt`` in its
state folder atomically (temporary file, fsync, rename), so a crash leaves the previous state
whole. It also writes it twice within round 0 (once planned, and once the sites' first
releases are in), so that a restart asks round 0's queries again word for word and the sites
answer them from their stores. The file's SHA-256 goes into the coordinator's audit log
(``state_saved``), so ``fedsyn server run --resume`` continues only from a state the chained,
signed log vouches for, and refuses one that was replaced or edited. It holds the run's record
(:class:`fedsyn.server.record.RunRecord`: public values, DP outputs and the coordinator's own
round timings; its docstring lists them), the global model and its average (DP outputs).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedsyn.errors import ConfigurationError
from fedsyn.files import write_atomically
from fedsyn.server.audit_events import SAVED
from fedsyn.trust.audit import verify_log
from fedsyn.trust.signing import VerificationError, sha256_file

log = logging.getLogger("fedsyn.server")

FORMAT = "fedsyn-coordinator-state/3"  # 2: the release choice; 3: round 0 under way (round IN_ROUND_ZERO)
READABLE_FORMATS = ("fedsyn-coordinator-state/2", FORMAT)
STATE_FILE = "state.pt"
LOCK_FILE = "coordinator.lock"
IN_ROUND_ZERO = -1  # a state's round while round 0 is under way (planned, or its first release in)


@dataclass
class RunState:
    """What a restarted coordinator needs to go on where the run stopped."""

    run_id: str
    round: int  # the last completed round (0: marginals only; IN_ROUND_ZERO: round 0 under way)
    settings: dict[str, Any]
    schema_sha256: str
    marginals: dict[str, np.ndarray]
    site_marginals: dict[int, dict[str, np.ndarray]]
    slots: dict[int, int]
    sites: list[dict[str, Any]]
    rounds: list[dict[str, Any]]
    model: dict[str, np.ndarray] | None = None  # generator and discriminator after the round
    sampler: dict[str, np.ndarray] | None = None  # the release's moving average of the generator
    release_choice: dict[str, Any] | None = None  # the coordinator's ReleaseChoice so far (round, misfit, sampler)
    late_nodes: list[int] = field(default_factory=list)  # nodes told they joined late (absent in earlier states)
    round_zero: dict[str, Any] | None = None  # round 0's queries and first releases while it is under way
    table_noise_std: float | None = None  # the summed tables' cell noise std (absent in earlier states)


def save_state(directory: Path, state: RunState) -> str:
    """Write ``state`` atomically; return its SHA-256 (for the audit log)."""
    target = directory / STATE_FILE
    payload = _tensors({"format": FORMAT, **{name: getattr(state, name) for name in state.__dataclass_fields__}})
    write_atomically(target, lambda out: torch.save(payload, out))
    return sha256_file(target)


def load_state(directory: Path, audit_path: Path | None, public_key: Ed25519PublicKey | None = None) -> RunState:
    """The saved state, if the intact audit log (its chain, and its signed head with
    ``public_key``) names the state's exact hash in its newest ``state_saved`` entry."""
    target = directory / STATE_FILE
    if not target.is_file():
        raise ConfigurationError(f"no saved run state in {directory}: nothing to resume (a run saves its state "
                                 "there once round 0 is planned)")
    if audit_path is None or not audit_path.is_file():
        raise ConfigurationError("resuming needs the run's audit log (run config 'audit-log'): it is what vouches "
                                 "for the saved state")
    try:
        verify_log(audit_path, public_key)
    except VerificationError as exc:
        raise ConfigurationError(f"the audit log does not verify, so it cannot vouch for {target}: {exc}") from None
    vouched = _last_saved(audit_path, target)
    if vouched is None:
        raise ConfigurationError(f"the audit log {audit_path} records no saved state: cannot vouch for {target}")
    if vouched != sha256_file(target):
        raise ConfigurationError(f"{target} is not the state the audit log {audit_path} last recorded "
                                 "(replaced or edited): refusing to resume from it")
    try:
        raw = torch.load(target, weights_only=True)
    except Exception:  # noqa: BLE001 - torch's text would advise unsafe unpickling
        raise ConfigurationError(f"{target} is not a readable coordinator state") from None
    if not isinstance(raw, dict) or raw.get("format") not in READABLE_FORMATS:
        raise ConfigurationError(f"{target} is not a coordinator state of this version (expected {FORMAT})")
    raw = _arrays(raw)
    raw = {"late_nodes": [], "round_zero": None, "table_noise_std": None, **raw}  # a state saved before these were kept
    return RunState(**{name: raw[name] for name in RunState.__dataclass_fields__})


@contextmanager
def holding_run(directory: Path, flower_run: str | None, wait: float = 120.0) -> Iterator[None]:
    """Only one coordinator process drives a run: an exclusive lock on the state folder itself,
    held for the whole run; ``LOCK_FILE`` in it names the process and its Flower run. The folder
    is locked, not the file: an operator who deleted a file lock they took for stale let a second
    coordinator lock a new file and drive the same run beside the first (helper-108 M1).

    A ServerApp cut off by a SuperLink crash keeps retrying and comes back when the SuperLink
    restarts; a resumed run would then train beside it. So a resumed run waits up to ``wait``
    seconds for the old one to stop (``fedsyn server run --resume`` asks Flower to stop it),
    saying so, and refuses to run beside it. A new run gets ``wait`` 0: a second `server run` on
    one state folder waited two minutes in silence, then started and charged every site again
    if the first had ended meanwhile (helper-104 M5)."""
    directory.mkdir(parents=True, exist_ok=True)
    folder = os.open(directory, os.O_RDONLY)
    try:
        deadline, said = time.monotonic() + wait, False
        while True:
            try:
                fcntl.flock(folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _holder(directory)
                held = (f"another coordinator process drives the run in {directory} (pid {holder.get('pid')}, "
                        f"Flower run {holder.get('flower_run')})")
                if time.monotonic() > deadline:
                    raise ConfigurationError(
                        f"{held}: let it finish, or stop it (`flwr stop {holder.get('flower_run')}` with the "
                        "coordinator's connection, as `fedsyn server run` does on Ctrl-C); nothing was charged by "
                        "this one") from None
                if not said:
                    log.info("%s: waiting up to %.0f s for it to stop", held, wait)
                    said = True
                time.sleep(1.0)
        try:
            (directory / LOCK_FILE).write_text(json.dumps({"pid": os.getpid(), "flower_run": flower_run}))
            yield
        finally:
            fcntl.flock(folder, fcntl.LOCK_UN)
    finally:
        os.close(folder)


def lock_holder(directory: Path) -> dict[str, Any] | None:
    """Who holds the run's lock (pid, Flower run), or None when no live process does."""
    if not directory.is_dir():
        return None
    folder = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(directory)
        fcntl.flock(folder, fcntl.LOCK_UN)
        return None
    finally:
        os.close(folder)


def _holder(directory: Path) -> dict[str, Any]:
    """What the lock's holder wrote about itself in ``LOCK_FILE`` (empty when gone or unreadable)."""
    try:
        holder = json.loads((directory / LOCK_FILE).read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _last_saved(audit_path: Path, target: Path) -> str | None:
    """The hash of the newest ``state_saved`` entry for ``target``."""
    if not audit_path.is_file():
        return None
    digest = None
    for line in audit_path.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("event") == SAVED and entry.get("path") == str(target.resolve()):
            digest = entry.get("sha256")
    return digest


def _tensors(value: Any) -> Any:
    """numpy arrays as tensors (``torch.load(weights_only=True)`` reads tensors, not arrays)."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, dict):
        return {key: _tensors(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_tensors(item) for item in value]
    return value


def _arrays(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, dict):
        return {key: _arrays(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_arrays(item) for item in value]
    return value

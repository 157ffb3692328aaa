"""Run the hospital's SuperNode under watch, so that a lost coordinator ends the process.

Two ways a Flower SuperNode stays alive but useless after a TLS fault:

- it gives up reconnecting (an expired or replaced server certificate) and then idles
  silently ("Giving up reconnection");
- it fails its first handshake and exits, but the SuperExec it started keeps running and
  retrying against the SuperNode that is gone.

Either way a service manager sees a live process and never restarts it, so the site stays
offline after the certificate is fixed. ``fedsyn client start`` therefore runs the SuperNode
in a process group of its own, passes its output through and forwards stop signals to the
group. When Flower logs that it gave up, or the SuperNode itself exits, the whole group is
stopped and ``fedsyn client start`` exits non-zero (:data:`EXIT_LOST_COORDINATOR` for a
give-up), which systemd's ``Restart=on-failure`` or a container's restart policy turns into
a fresh start. Written to a file or a journal rather than a terminal, the output loses
Flower's colour codes.

The group dies with the supervisor. Its leader is a small process of this module (``python -m
fedsyn.client.ops.supervise --lead``) that the kernel signals when the supervisor ends, however it
ends (Linux ``prctl(PR_SET_PDEATHSIG)``; SIGKILL included): it then stops the SuperNode and
whatever the SuperNode started in the group. The SuperNode itself is signalled if the leader
dies. A record in the site's folder (:class:`SiteRuntime`, ``supernode.json``) names the
group, so a start that finds one left behind anyway (another platform, an older fedsyn)
stops it first, and says so; a local port held by something else is named with what to do.

Flower's one-line errors are followed by one line saying what the operator should do. Its
text for a refused activation (``[code: 2004] Failed to activate SuperNode``) is the same for
an unregistered key, for a key a copy of this site uses elsewhere and for this site's own
previous SuperNode, which the SuperLink lists as online for up to a minute after it stopped
without signing off (Flower 1.41: two missed 30 s heartbeats). The record's last sign of
life tells them apart as far as the site can: within that minute the supervisor waits for
the old entry to expire and tries again by itself. A TLS hostname mismatch, an expired
certificate and a certificate from another CA each get their own line (at a give-up, from a
handshake of the supervisor's own where Flower has not said it: :mod:`fedsyn.client.ops.tls_probe`), and a permission
error in a round (whose text the site's log withholds) is followed by the site's own files
that this user cannot write.
"""

from __future__ import annotations

import contextvars
import ctypes
import functools
import hashlib
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fedsyn.client.ops.tls_probe import probe

GAVE_UP = "Giving up reconnection"
UNAUTHORIZED = "401 Unauthorized"  # the SuperLink refused a request this node signed
ENDED = "SuperNode terminated gracefully"  # said when it stops, asked to or not
CLOCK_FIX = ("Flower's site authentication signs the time, so a clock a few seconds off here or at the coordinator "
             "is refused as a replayed request: set both machines to network time (NTP, e.g. `timedatectl set-ntp "
             "true`) and start again. If both clocks are right, ask the coordinator whether it still lists this "
             "site's key (`fedsyn server sites list`)")
ACTIVATED = re.compile(r"SuperNode ID: (\d+)")
ACTIVATION_REFUSED = "Failed to activate SuperNode"
EXIT_LOST_COORDINATOR = 75  # EX_TEMPFAIL: try again later
EXIT_CANNOT_START = 73  # EX_CANTCREAT: the site's local port or its SuperNode is held by another process
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Flower colours its log lines; a log file should not hold the codes
# Flower 1.41 lists a node as online until two heartbeats (30 s apart) are missed.
NODE_EXPIRY_S = 60.0
ALIVE_EVERY_S = 10.0  # how often the record's last sign of life is renewed while the node is connected
STOP_GRACE_S = 15
ACTIVATION_RETRIES = 3
RECORD = "supernode.json"
PR_SET_PDEATHSIG = 1

# Flower's (and Python's ssl module's) words for the usual set-up mistakes, most specific first,
# and what the hospital's operator should do. One line per kind, once.
TLS_HINTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?:Hostname|IP address) mismatch, certificate is not valid for '([^']*)'"),
     "the coordinator's TLS certificate does not name the address this site dials ({0}, `superlink` in the "
     "site policy): use the host name the certificate was issued for (the names given to `fedsyn certs init "
     "--host` at the coordinator), or ask the coordinator to issue its certificate for {0}. The CA is not the "
     "problem"),
    (re.compile(r"certificate is not yet valid"),
     "the coordinator's TLS certificate is not valid yet by this machine's clock: check that the clock is right "
     "(NTP) here, and at the coordinator that the certificate was not issued with a future start"),
    (re.compile(r"certificate has expired"),
     "the coordinator's TLS certificate has expired: ask the coordinator to renew it (same CA: nothing changes "
     "here)"),
    (re.compile(r"CERTIFICATE_VERIFY_FAILED"),
     "the coordinator's TLS certificate does not verify against this site's root_certificates (signed by another "
     "CA): ask the coordinator for its current ca.crt, or to renew its server certificate"),
)
# The probe dials the SuperLink directly; Flower's gRPC goes through a proxy these name.
PROXY_VARIABLES = ("grpc_proxy", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")
_PROXY_NOTE = (" (this check dialled it directly, while the SuperNode goes through the proxy this machine's "
               "environment names: check the proxy too)")
PERMISSION = re.compile(r"\bPermissionError\b")
# Flower's own line for a ClientApp that ran out of memory while sending a reply: that ClientApp
# then hangs, and the SuperNode waits on it and answers nothing more (helper-108 H1). fedsyn's
# handlers catch a MemoryError of their own, log it and answer with an error: their lines (JSON,
# from a fedsyn logger) are not this one, and stopping the node on them lost that answer
# (helper-109 M2). NumPy's _ArrayMemoryError is one too.
OUT_OF_MEMORY = re.compile(r"MemoryError\b")
FEDSYN_LINE = re.compile(r'"logger":\s*"fedsyn')


class Console(Protocol):
    """Where the supervisor writes its child's lines and its own: a terminal stream, or the
    relay into fedsyn's log handler (:class:`fedsyn.logs.RelayStream`)."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...

    def isatty(self) -> bool: ...


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _dies_with_parent(number: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` asking the kernel to send ``number`` to the child when its parent ends
    (Linux; None elsewhere). Resolved before the fork: the child only makes the call."""
    libc = _libc()
    if libc is None:
        return None
    prctl = libc.prctl

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, number, 0, 0, 0)

    return arm


# -- the site's record of its SuperNode ---------------------------------------------------------


@dataclass(frozen=True)
class SiteRuntime:
    """What the supervisor knows of the site: the folder its record lives in (the ledger's:
    writable under systemd), the SuperNode's local port, its key, the files a round writes, and
    the coordinator's address and the CA file the site trusts it by (:func:`_unreached`)."""

    folder: Path
    local_port: int | None = None
    key_file: Path | None = None
    writes: tuple[Path, ...] = field(default_factory=tuple)
    superlink: str | None = None
    root_certificates: Path | None = None

    @property
    def record(self) -> Path:
        return self.folder / RECORD


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), None if it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else int(fields[19])


def _group_members(pgid: int, since: int | None) -> list[int]:
    """Live processes of group ``pgid`` started no earlier than ``since`` (a reused id is not ours)."""
    if not Path("/proc/self/stat").exists():  # not Linux: the group exists or not
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except OSError:
            return []
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid and (since is None or int(fields[19]) >= since):
            members.append(int(entry.name))
    return members


def process_alive(pid: int | None, started: int | None) -> bool:
    if pid is None:
        return False
    if Path("/proc/self/stat").exists():
        return started is not None and _start_time(pid) == started
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


class NodeRecord:
    """``supernode.json`` in the site's folder: the process group the SuperNode runs in while it
    runs, and the node id, key fingerprint and last sign of life the coordinator saw."""

    def __init__(self, site: SiteRuntime | None):
        self.site = site
        self.data: dict[str, Any] = {}
        if site is not None:
            try:
                self.data = json.loads(site.record.read_text())
            except (OSError, ValueError):
                pass
        self.connected = False  # this supervisor's node was accepted and has not stopped since
        self._renewed = 0.0

    def _save(self) -> None:
        if self.site is None:
            return
        try:
            self.site.folder.mkdir(parents=True, exist_ok=True)
            temporary = self.site.record.with_name(RECORD + ".tmp")
            temporary.write_text(json.dumps(self.data, indent=2) + "\n")
            os.replace(temporary, self.site.record)
        except OSError:
            pass  # a read-only folder is reported by the pre-flight check; the node runs regardless

    def _key(self) -> str | None:
        try:
            key_file = self.site.key_file if self.site is not None else None
            return hashlib.sha256(key_file.read_bytes()).hexdigest()[:16] if key_file else None
        except OSError:
            return None

    # -- the process group

    def take_over(self, out: Console) -> int | None:
        """Stop a SuperNode group an earlier supervisor of this site left running. Returns an exit
        code when this start must not go on (another supervisor of this site is alive)."""
        group = self.data.get("group")
        if not group:
            return None
        supervisor = group.get("supervisor")
        if supervisor != os.getpid() and process_alive(supervisor, group.get("supervisor_started")):
            _say(out, f"another `fedsyn client start` (pid {supervisor}) already runs this site's SuperNode "
                      f"(process group {group['pgid']}, local port {group.get('local_port')}). Stop it first "
                      "(`systemctl stop fedsyn-client`, or Ctrl-C in its terminal); two SuperNodes with one key "
                      "lock each other out")
            return EXIT_CANNOT_START
        members = _group_members(group["pgid"], group.get("started"))
        if members:
            _say(out, f"a SuperNode left running by an earlier `fedsyn client start` (process group {group['pgid']}: "
                      f"{', '.join(_command_line(pid)[:80] for pid in members[:3])}) still holds local port "
                      f"{group.get('local_port')}; stopping it before starting again")
            _stop_pgid(group["pgid"], group.get("started"))
        self.data.pop("group", None)
        self._save()
        return None

    def started(self, process: subprocess.Popen[str]) -> None:
        self.data["group"] = {"pgid": process.pid, "started": _start_time(process.pid),
                              "supervisor": os.getpid(), "supervisor_started": _start_time(os.getpid()),
                              "local_port": self.site.local_port if self.site is not None else None}
        self._save()

    def stopped(self) -> None:
        self.data.pop("group", None)
        self._save()

    # -- what the coordinator saw

    def activated(self, node_id: str) -> None:
        self.connected = True
        self.data.update(node_id=node_id, key=self._key(), activated_at=time.time(), last_alive=time.time())
        self._renewed = time.monotonic()
        self._save()

    def renew(self) -> None:
        """Note that the connected node is alive (at most every :data:`ALIVE_EVERY_S`)."""
        if self.connected and time.monotonic() - self._renewed >= ALIVE_EVERY_S:
            self._renewed = time.monotonic()
            self.data["last_alive"] = time.time()
            self._save()

    def expiry_wait(self) -> float | None:
        """Seconds until the SuperLink stops listing this site's previous node as online; None
        when that node was last alive longer ago than Flower keeps a silent node listed, or ran
        with another key (a site given a new, unregistered key was told to wait for its old node
        before it was told to register the new one: helper-98 M5)."""
        last, key = self.data.get("last_alive"), self.data.get("key")
        if last is None or (key is not None and key != self._key()):
            return None
        expires = last + NODE_EXPIRY_S + ALIVE_EVERY_S + 5  # the record may be one renewal behind
        left = expires - time.time()
        return left if left > 0 else None

    def explain_refused_activation(self) -> str:
        """Flower's 'Failed to activate SuperNode', told apart by what this site knows."""
        node, last = self.data.get("node_id"), float(self.data.get("last_alive") or 0)
        wait = self.expiry_wait()
        if wait is not None:
            return (f"the coordinator's SuperLink still lists this site's previous SuperNode (node {node}, alive "
                    f"{time.time() - last:.0f} s ago) as online: Flower keeps a node that stopped without signing "
                    "off listed for about a minute after its last heartbeat. Nothing to do: this supervisor waits "
                    f"{wait:.0f} s for the old entry to expire and tries again")
        if node is not None and self.data.get("key") == self._key():
            return (f"the coordinator accepted this site's key before (node {node}), and now refuses it: another "
                    "SuperNode using a copy of this key is online (a cloned machine or container image, or a copied "
                    "site folder), or the coordinator removed node "
                    f"{node}. Stop the copy and give every site its own key (`fedsyn certs site-key`, then `fedsyn "
                    "server sites add auth.pub` at the coordinator); if no copy runs, ask the coordinator "
                    "(`fedsyn server sites list`)")
        return ("the coordinator does not know this site's key, or another SuperNode using the same key is online "
                "(a copied site folder or cloned machine): send the public key (auth.pub next to auth_private_key) "
                "to the coordinator to register (`fedsyn server sites add auth.pub`), then start again; if it is "
                "registered, ask the coordinator (`fedsyn server sites list`) whether its node is online elsewhere. "
                "If this site's SuperNode stopped less than a minute ago, wait a minute: the coordinator still "
                "lists it")


def _stop_pgid(pgid: int, since: int | None, grace: float = STOP_GRACE_S) -> None:
    """SIGTERM the group, then SIGKILL what is left after ``grace`` seconds; wait until it is gone."""
    for number, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, number)
        except OSError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _group_members(pgid, since):
                return
            time.sleep(0.1)


# -- local checks --------------------------------------------------------------------------------


def port_in_use(port: int) -> bool:
    """Whether something listens on ``port`` on this machine (any address): binding it would fail."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed connection's TIME_WAIT is no holder
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def _listeners(port: int) -> list[int]:
    """Processes with a socket listening on ``port`` (Linux; those this user may inspect)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    pids = []
    for entry in Path("/proc").iterdir() if inodes else ():
        if not entry.name.isdigit():
            continue
        try:
            descriptors = list((entry / "fd").iterdir())
        except OSError:  # another user's process, or gone
            continue
        for descriptor in descriptors:
            try:
                link = os.readlink(descriptor)
            except OSError:  # closed since the listing
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                pids.append(int(entry.name))
                break
    return pids


def explain_busy_port(port: int) -> str:
    holders = _listeners(port)
    named = "; ".join(f"pid {pid}: {_command_line(pid)[:120]}" for pid in holders)
    return (f"local port {port} (`local_port` in the site policy's [coordinator] section) is already in use, so the "
            f"SuperNode would fail with 'address already in use'. Held by {named or 'a process this user cannot see'}"
            f". If that is an earlier SuperNode of this site, stop it (`kill {holders[0] if holders else 'PID'}`); "
            f"otherwise choose another local_port. `ss -ltnp 'sport = :{port}'` shows the holder")


def writability_problems(paths: tuple[Path, ...] | list[Path]) -> list[str]:
    """Each of the site's own files (or, for one not yet made, its folder) that this user cannot
    write, with the owner and mode, or why not: a folder that does not exist (the site's state
    never created: four identical 'not writable (No such file or directory)' lines told an
    operator to change permissions), a read-only file system (owner and mode were fine). Each
    once. Paths on the site's own disk: for its local log only."""
    problems: list[str] = []
    for path in paths:
        target = path if path.exists() else path.parent
        if not target.exists():
            said = f"{target} does not exist: create the site's state with `fedsyn client ledger init`"
        elif not os.access(target, os.W_OK | (os.X_OK if target.is_dir() else 0)):
            if os.statvfs(target).f_flag & os.ST_RDONLY:
                said = f"{target} is on a read-only file system: mount it writable"
            else:
                info = target.stat()
                said = (f"{target} is not writable by uid {os.getuid()} (owner uid {info.st_uid}, mode "
                        f"{stat.filemode(info.st_mode)}): give this user write access")
        else:
            continue
        if said not in problems:
            problems.append(said)
    return problems


# -- the supervisor --------------------------------------------------------------------------------


def _say(out: Console, text: str) -> None:
    out.write(f"fedsyn: {text}\n")
    out.flush()


@dataclass
class _Attempt:
    gave_up: threading.Event = field(default_factory=threading.Event)  # set to stop this run of the SuperNode
    out_of_memory: bool = False  # why it was set, when not a give-up
    refused_activation: bool = False
    unauthorized: bool = False
    ended: bool = False  # it said it stopped (the supervisor may not have asked)
    activated: bool = False
    tls_failed: bool = False  # a handshake failed on the coordinator's certificate (TLS_HINTS)


def supervise(command: list[str], environment: dict[str, str], out: Console = sys.stdout,
              poll_seconds: float = 0.5, site: SiteRuntime | None = None,
              before_start: Callable[[], None] | None = None) -> int:
    """Run ``command`` until it ends or gives up reconnecting; return its exit code (1 if it
    exited 0 while its helpers still ran), or :data:`EXIT_LOST_COORDINATOR` for a give-up.

    With ``site``, a SuperNode left running by an earlier supervisor is stopped first, a busy
    local port is refused (:data:`EXIT_CANNOT_START`) with its holder named, and a refused
    activation while the SuperLink still lists this site's previous node is retried once it
    has expired (at most :data:`ACTIVATION_RETRIES` times). ``before_start`` runs once this start
    is the site's only one, before the SuperNode starts (the launcher its apps read the policy by)."""
    record = NodeRecord(site)
    if site is not None:
        refused = record.take_over(out)
        if refused is not None:
            return refused
        if site.local_port is not None and port_in_use(site.local_port):
            _say(out, explain_busy_port(site.local_port))
            return EXIT_CANNOT_START
    if before_start is not None:
        before_start()
    stopping = threading.Event()
    running: list[subprocess.Popen[str]] = []

    def on_signal(number: int, _frame: object) -> None:
        stopping.set()
        for process in running:
            _signal_group(process, number)

    previous = {number: signal.signal(number, on_signal) for number in FORWARDED}
    try:
        attempt = 1
        while True:
            code, outcome = _run_once(command, environment, out, poll_seconds, record, running)
            if outcome.tls_failed and code != 0 and not stopping.is_set():
                # A SuperNode that exits on a certificate it cannot verify lost the coordinator as surely
                # as one that gave up reconnecting: the same code, so the service manager retries once the
                # certificate is fixed (Flower's own is 1, where `client start --help` documents 75;
                # helper-116 M5). The operator's own stop keeps its code (helper-122).
                code = EXIT_LOST_COORDINATOR
            refused = outcome.unauthorized or outcome.ended
            if code == 0 and not stopping.is_set() and refused:
                # It stopped itself, exit 0: a service manager restarts only a failure (helper-104 H2: a
                # clock 30 s off stopped every site for good, silently). After it had joined too: a clock
                # that drifted, or a site the coordinator removed, ended it without a 401 line (helper-120
                # H1). The operator's stop comes through this supervisor (``stopping``) and keeps its 0.
                if outcome.unauthorized:
                    why = ""
                elif outcome.activated:
                    why = (" after it had joined, without saying why: the coordinator may have removed this site "
                           "(`fedsyn server sites list` there), or refused its signed requests, or it was stopped by "
                           "hand (to stop the site, stop `fedsyn client start` itself, e.g. its service). "
                           f"{CLOCK_FIX}")
                else:
                    why = (" without saying why; where the coordinator's SuperLink log shows 401 for this site: "
                           f"{CLOCK_FIX}")
                _say(out, f"the SuperNode stopped on its own{why}; exiting with {EXIT_LOST_COORDINATOR} so the "
                          "service manager restarts it")
                return EXIT_LOST_COORDINATOR
            wait = record.expiry_wait() if outcome.refused_activation else None
            if wait is None or stopping.is_set() or attempt > ACTIVATION_RETRIES:
                return code
            attempt += 1
            _say(out, f"trying again in {wait:.0f} s (attempt {attempt} of {ACTIVATION_RETRIES + 1})")
            if stopping.wait(wait):
                return 0
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _run_once(command: list[str], environment: dict[str, str], out: Console, poll_seconds: float,
              record: NodeRecord, running: list[subprocess.Popen[str]]) -> tuple[int, _Attempt]:
    """One SuperNode run under its group leader (see :func:`lead`); its code and what it showed."""
    attempt = _Attempt()
    leader = [sys.executable, "-m", "fedsyn.client.ops.supervise", "--lead", str(os.getpid()), "--", *command]
    process = subprocess.Popen(leader, env={**os.environ, **environment}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True,
                               preexec_fn=_dies_with_parent(signal.SIGTERM))
    running.append(process)
    record.started(process)
    # in a copy of this context: what the command knows its lines are about (fedsyn.logs.known) holds there too
    reader = threading.Thread(target=contextvars.copy_context().run,
                              args=(_pass_through, process, out, attempt, record), daemon=True)
    reader.start()
    try:
        while process.poll() is None and not attempt.gave_up.wait(poll_seconds):
            record.renew()
        if attempt.out_of_memory:
            _say(out, "a ClientApp of this site ran out of memory (MemoryError) and the SuperNode would wait on it "
                      "for ever, answering nothing more; stopping it and exiting with "
                      f"{EXIT_LOST_COORDINATOR} so the service manager restarts it. If it happens again, give "
                      "`fedsyn client start` more memory (its service's memory limit), or ask the coordinator for a "
                      "smaller model or batch")
        elif attempt.gave_up.is_set():
            _say(out, f"the SuperNode gave up reaching the coordinator{_unreached(record.site, attempt)}; stopping it "
                      f"and exiting with {EXIT_LOST_COORDINATOR} so the service manager restarts it")
    finally:
        _stop_group(process)
        running.remove(process)
        record.connected = False
        record.stopped()
        reader.join(timeout=5)  # the rest of its output, and what it means, before deciding
    return (EXIT_LOST_COORDINATOR if attempt.gave_up.is_set() else process.returncode), attempt


def tls_hint(said: str) -> str | None:
    """What the operator should do about the TLS failure ``said`` names (a line of Flower's, or the
    ssl module's words), None where it names none of :data:`TLS_HINTS`."""
    for pattern, text in TLS_HINTS:
        found = pattern.search(said)
        if found:
            return text.format(*found.groups())
    return None


def _unreached(site: SiteRuntime | None, attempt: _Attempt) -> str:
    """Why the SuperNode could not reach the coordinator, from a handshake of the supervisor's own
    (:mod:`fedsyn.client.ops.tls_probe`): Flower's ``[SSL]`` line, when it says the certificate,
    may come after the give-up or not at all, and the message then said only "network or TLS
    certificate" (operator finding M4)."""
    if attempt.tls_failed:
        return ": its TLS certificate (the line above says what to do)"
    if site is None or site.superlink is None or site.root_certificates is None:
        return " (network or TLS certificate)"
    found = probe(site.superlink, site.root_certificates)
    if found.unusable is not None:
        return f": {found.unusable}"
    if found.refused is not None:
        what = tls_hint(found.refused) or (f"the TLS handshake with {site.superlink} failed ({found.refused}): ask "
                                           "the coordinator whether its SuperLink's certificate or address changed")
        return f": {what} (root_certificates: {site.root_certificates})"
    if found.unreachable is not None:
        return (f": {site.superlink} (`superlink` in the site policy) cannot be reached now ({found.unreachable}): "
                "check that the coordinator's SuperLink runs at that address and that no firewall is in between"
                f"{_PROXY_NOTE if any(os.environ.get(name) for name in PROXY_VARIABLES) else ''}")
    return (f": a TLS handshake with {site.superlink} against root_certificates {site.root_certificates} succeeds "
            "now, so the certificates are fine: the SuperLink stopped answering for a while (restarted, or the "
            "network dropped)")


def _permission_hint(record: NodeRecord) -> str:
    problems = writability_problems(record.site.writes) if record.site is not None else []
    if problems:
        return ("a round failed on a file this site cannot write: " + "; ".join(problems) + " (the ledger's "
                "folder holds the ledger, its lock and the stored replies)")
    return ("a round failed on a file or folder this site may not use (PermissionError): check that the user running "
            "`fedsyn client start` can write the ledger's folder (ledger, its lock, stored replies) and the audit "
            "trail; FEDSYN_DEBUG=1 in the SuperNode's environment shows the path")


def _pass_through(process: subprocess.Popen[str], out: Console, attempt: _Attempt, record: NodeRecord) -> None:
    """Echo the node's output; flag a give-up, and say once what a known failure means."""
    hinted: set[str] = set()
    plain = not out.isatty()

    def hint(kind: str, text: Callable[[], str]) -> None:
        if kind not in hinted:
            hinted.add(kind)
            out.write(f"fedsyn: {text()}\n")

    for line in process.stdout or ():
        out.write(ANSI.sub("", line) if plain else line)
        activated = ACTIVATED.search(line)
        if activated:
            record.activated(activated.group(1))
            attempt.activated = True
        if ACTIVATION_REFUSED in line:
            attempt.refused_activation = True
            hint("activation", record.explain_refused_activation)
        tls = tls_hint(line)
        if tls is not None:
            attempt.tls_failed = True
            hint("tls", functools.partial(str, tls))
        if PERMISSION.search(line):
            hint("permission", lambda: _permission_hint(record))
        if UNAUTHORIZED in line:
            attempt.unauthorized = True
            hint("unauthorized", lambda: f"the coordinator refused this site's signed request (401): {CLOCK_FIX}")
        attempt.ended = attempt.ended or ENDED in line
        out.flush()
        if GAVE_UP in line:
            attempt.gave_up.set()
        if OUT_OF_MEMORY.search(line) and not FEDSYN_LINE.search(line):
            attempt.out_of_memory = True
            attempt.gave_up.set()


def _signal_group(process: subprocess.Popen[str], number: int) -> None:
    try:
        os.killpg(process.pid, number)
    except (ProcessLookupError, PermissionError):
        pass


def _stop_group(process: subprocess.Popen[str]) -> None:
    """Stop the SuperNode and whatever it left running in its group (e.g. its SuperExec)."""
    _signal_group(process, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(process, signal.SIGKILL)
    process.wait()


# -- the group's leader ------------------------------------------------------------------------------


def lead(parent: int, command: list[str]) -> int:
    """Run ``command`` as the process group's leader on behalf of the supervisor ``parent``.

    The supervisor armed this process to receive SIGTERM when it ends. A stop signal while the
    supervisor lives is the supervisor stopping the group (the SuperNode got it too); once the
    supervisor is gone, this process stops the whole group (SIGTERM, then SIGKILL after
    :data:`STOP_GRACE_S`), the SuperNode's own helpers included."""
    if os.getppid() != parent:  # the supervisor ended before the death signal was armed
        return 1
    orphaned = False

    def on_signal(_number: int, _frame: object) -> None:
        nonlocal orphaned
        if orphaned or os.getppid() == parent:
            return
        orphaned = True
        signal.signal(signal.SIGALRM, lambda *_: os.killpg(0, signal.SIGKILL))
        signal.alarm(STOP_GRACE_S)
        os.killpg(0, signal.SIGTERM)

    for number in FORWARDED:
        signal.signal(number, on_signal)
    try:
        child = subprocess.Popen(command, preexec_fn=_dies_with_parent(signal.SIGTERM))
    except OSError as exc:
        print(f"fedsyn: cannot start {command[0]}: {exc.strerror or exc}", flush=True)
        return 127
    code = child.wait()
    if orphaned:
        os.killpg(0, signal.SIGKILL)  # whatever the SuperNode left in the group; this process too
    return code if code >= 0 else 128 - code


if __name__ == "__main__" and len(sys.argv) > 3 and sys.argv[1] == "--lead" and sys.argv[3] == "--":
    sys.exit(lead(int(sys.argv[2]), sys.argv[4:]))

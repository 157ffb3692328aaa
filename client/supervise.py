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
a fresh start. Flower's messages for an unregistered key or an unverifiable certificate are
followed by one line saying what the operator should do. Written to a file or a journal
rather than a terminal, the output loses Flower's colour codes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from typing import TextIO

GAVE_UP = "Giving up reconnection"
EXIT_LOST_COORDINATOR = 75  # EX_TEMPFAIL: try again later
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Flower colours its log lines; a log file should not hold the codes
# Flower's words for the usual set-up mistakes, and what the hospital's operator should do.
HINTS = {
    "Failed to activate SuperNode": "the coordinator does not know this site's key: send the public key "
                                    "(auth.pub next to auth_private_key) to the coordinator to register "
                                    "(`fedsyn server sites add auth.pub`), then start again",
    "CERTIFICATE_VERIFY_FAILED": "the coordinator's TLS certificate does not verify against this site's "
                                 "root_certificates (expired, or signed by another CA): ask the coordinator for its "
                                 "current ca.crt, or to renew its server certificate",
}


def supervise(command: list[str], environment: dict[str, str], out: TextIO = sys.stdout,
              poll_seconds: float = 0.5) -> int:
    """Run ``command`` until it ends or gives up reconnecting; return its exit code (1 if it
    exited 0 while its helpers still ran), or :data:`EXIT_LOST_COORDINATOR` for a give-up."""
    process = subprocess.Popen(command, env={**os.environ, **environment}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
    gave_up = threading.Event()
    reader = threading.Thread(target=_pass_through, args=(process, out, gave_up), daemon=True)
    reader.start()
    previous = {number: signal.signal(number, lambda received, _frame: _signal_group(process, received))
                for number in FORWARDED}
    try:
        while process.poll() is None and not gave_up.wait(poll_seconds):
            pass
        if gave_up.is_set():
            out.write("fedsyn: the SuperNode gave up reaching the coordinator (network or TLS certificate); "
                      f"stopping it and exiting with {EXIT_LOST_COORDINATOR} so the service manager restarts it\n")
            out.flush()
            return EXIT_LOST_COORDINATOR
        return process.returncode
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        _stop_group(process)


def _pass_through(process: subprocess.Popen, out: TextIO, gave_up: threading.Event) -> None:
    """Echo the node's output; flag a give-up, and say once what a known failure means."""
    hinted: set[str] = set()
    plain = not out.isatty()
    for line in process.stdout or ():
        out.write(ANSI.sub("", line) if plain else line)
        for pattern, hint in HINTS.items():
            if pattern in line and pattern not in hinted:
                hinted.add(pattern)
                out.write(f"fedsyn: {hint}\n")
        out.flush()
        if GAVE_UP in line:
            gave_up.set()


def _signal_group(process: subprocess.Popen, number: int) -> None:
    try:
        os.killpg(process.pid, number)
    except ProcessLookupError:
        pass


def _stop_group(process: subprocess.Popen) -> None:
    """Stop the SuperNode and whatever it left running in its group (e.g. its SuperExec)."""
    _signal_group(process, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(process, signal.SIGKILL)
    process.wait()

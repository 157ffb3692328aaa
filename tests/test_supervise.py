"""``fedsyn client start`` ends when Flower's SuperNode gives up on the coordinator or exits
leaving its helpers behind, so a service manager restarts it instead of keeping a silent,
disconnected node alive."""

import io
import os
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedsyn.client.ops.supervise import EXIT_LOST_COORDINATOR, supervise
from fedsyn.client.ops.tls_probe import Probe

HANGS_AFTER_GIVING_UP = ("import time\n"
                         "print('WARNING : Giving up reconnection after 3.02 seconds and 2 tries.', flush=True)\n"
                         "time.sleep(600)\n")
# Like a SuperNode whose first handshake failed: it exits, its SuperExec keeps retrying.
EXITS_LEAVING_A_HELPER = ("import subprocess, sys\n"
                          "helper = subprocess.Popen([sys.executable, '-c', 'import time, os; "
                          "print(os.getpid(), flush=True); time.sleep(600)'])\n"
                          "import time; time.sleep(1)\n"
                          "raise SystemExit(49)\n")


def test_a_node_that_gave_up_is_stopped_and_reported_as_a_failure():
    out = io.StringIO()
    started = time.monotonic()
    assert supervise([sys.executable, "-c", HANGS_AFTER_GIVING_UP], {}, out) == EXIT_LOST_COORDINATOR
    assert time.monotonic() - started < 30  # it did not wait for the hanging child
    assert "Giving up reconnection" in out.getvalue() and "restarts it" in out.getvalue()


def test_a_node_that_exits_takes_its_helpers_with_it():
    out = io.StringIO()
    started = time.monotonic()
    assert supervise([sys.executable, "-c", EXITS_LEAVING_A_HELPER], {}, out) == 49
    assert time.monotonic() - started < 30
    helper = int(out.getvalue().split()[0])
    time.sleep(0.5)
    assert not os.path.exists(f"/proc/{helper}") or "Z" in open(f"/proc/{helper}/stat").read().split()[2]


def test_the_nodes_own_exit_code_and_output_pass_through_without_colour_codes():
    out = io.StringIO()
    script = "print('\\x1b[92mINFO \\x1b[0m: node log line'); raise SystemExit(3)"
    assert supervise([sys.executable, "-c", script], {}, out) == 3
    assert out.getvalue().startswith("INFO : node log line")


def test_known_failures_are_explained_once_to_the_operator():
    out = io.StringIO()
    script = "for _ in range(3): print('[code: 2004] Failed to activate SuperNode.')\nraise SystemExit(49)"
    assert supervise([sys.executable, "-c", script], {}, out) == 49
    assert out.getvalue().count("fedsyn server sites add auth.pub") == 1


def test_a_node_refused_for_its_clock_is_explained_and_ends_as_a_failure():
    """helper-104 H2: with the coordinator's clock 30 s off, Flower refused the sites' signed
    heartbeats (401), the SuperNodes stopped 'gracefully' with exit 0, and a service manager that
    restarts failures only left every site down, with no word of the clock."""
    out = io.StringIO()
    refused = ("print(\"httpx.HTTPStatusError: Client error '401 Unauthorized' for url 'https://x/v1/fleet/"
               "send-node-heartbeat'\")\nprint('INFO : SuperNode terminated gracefully.')\n")
    assert supervise([sys.executable, "-c", refused], {}, out) == EXIT_LOST_COORDINATOR
    said = " ".join(out.getvalue().split())
    assert said.count("network time (NTP") == 1 and "stopped on its own; exiting with 75" in said
    out = io.StringIO()  # a fresh start refused at activation: Flower says nothing but that it stopped
    assert supervise([sys.executable, "-c", "print('INFO : SuperNode terminated gracefully.')"], {}, out) \
        == EXIT_LOST_COORDINATOR
    assert "stopped on its own without saying why" in out.getvalue() and "NTP" in out.getvalue()
    out = io.StringIO()  # helper-120 H1: joined, then a drifted clock or a removal ended it, no 401 line, exit 0
    joined = "print('INFO : SuperNode ID: 7231253610239500838')\nprint('INFO : SuperNode terminated gracefully.')"
    assert supervise([sys.executable, "-c", joined], {}, out) == EXIT_LOST_COORDINATOR
    said = " ".join(out.getvalue().split())
    assert "after it had joined" in said and "fedsyn server sites list" in said and "NTP" in said


def test_a_node_that_stopped_by_itself_after_it_joined_is_restarted_and_told_every_cause():
    """helper-120 H1: a clock that drifted after the site joined, or the coordinator removing the
    site, ended the SuperNode with exit 0 and no 401 line, and under Restart=on-failure the site
    stayed offline for good, silently. helper-105 L1's case, the operator's SIGTERM to the
    SuperNode alone, now restarts too, and the message names it; stopping `fedsyn client start`
    itself (the service) still ends with 0 (``stopping``)."""
    out = io.StringIO()
    joined = "print('INFO : SuperNode ID: 77', flush=True)\nprint('INFO : SuperNode terminated gracefully.')\n"
    assert supervise([sys.executable, "-c", joined], {}, out) == EXIT_LOST_COORDINATOR
    said = " ".join(out.getvalue().split())
    assert "after it had joined" in said and "stopped by hand" in said


def test_a_node_whose_clientapp_ran_out_of_memory_is_restarted_not_left_deaf():
    """helper-108 H1: a ClientApp that hit a MemoryError while Flower sent its reply hung, and its
    SuperNode answered nothing more while `client status` and `sites list` said it was online.
    The supervisor stops it and exits for its service manager to restart it."""
    out = io.StringIO()
    hung = ("import time\nprint('ERROR : MemoryError: ', flush=True)\n"
            "print('INFO : Sending: train message (ID: 42fc)', flush=True)\ntime.sleep(600)\n")
    started = time.monotonic()
    assert supervise([sys.executable, "-c", hung], {}, out) == EXIT_LOST_COORDINATOR
    assert time.monotonic() - started < 30
    assert "ran out of memory" in out.getvalue() and "network or TLS" not in out.getvalue()
    # helper-109 M2: fedsyn's own handled MemoryError (its ClientApp answered with an error) is no hang
    out = io.StringIO()
    handled = ('import time\nprint(\'{"level": "error", "logger": "fedsyn.client", "message": "request failed with '
               'MemoryError"}\', flush=True)\nprint("INFO : Sent reply", flush=True)\nraise SystemExit(3)\n')
    assert supervise([sys.executable, "-c", handled], {}, out) == 3
    assert "ran out of memory" not in out.getvalue()


@contextmanager
def _tls_server(certs: Path) -> Iterator[int]:
    """A TLS server on loopback with ``certs``' server.crt and server.key; yields its port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs / "server.crt", certs / "server.key")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                with context.wrap_socket(connection, server_side=True):
                    pass
            except OSError:  # the client refused the certificate: an alert, here
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        listener.close()


def test_the_tls_probe_names_what_is_wrong_with_the_coordinators_certificate(tmp_path):
    """Operator finding M4: the probe shakes hands as the SuperNode does, with the site's CA file."""
    from fedsyn.client.ops.supervise import tls_hint
    from fedsyn.client.ops.tls_probe import probe
    from fedsyn.trust.certs import create_ca, create_server_certificate

    create_ca(tmp_path / "certs")
    create_ca(tmp_path / "other", name="another coordinator CA")
    ca, other = tmp_path / "certs" / "ca.crt", tmp_path / "other" / "ca.crt"
    create_server_certificate(tmp_path / "certs", ["127.0.0.1"])
    with _tls_server(tmp_path / "certs") as port:
        assert probe(f"127.0.0.1:{port}", ca) == Probe()
        refused = probe(f"127.0.0.1:{port}", other).refused
        assert refused is not None and "signed by another CA" in str(tls_hint(refused))
    create_server_certificate(tmp_path / "certs", ["localhost"])
    with _tls_server(tmp_path / "certs") as port:
        refused = probe(f"127.0.0.1:{port}", ca).refused
        assert refused is not None and "does not name the address this site dials (127.0.0.1" in str(tls_hint(refused))
    assert probe(f"127.0.0.1:{port}", ca).unreachable  # nothing listens there now


def test_the_tls_probe_names_an_unreadable_ca_file_or_address_as_the_sites_own_not_a_network_fault(tmp_path):
    """helper-127 M1: a CA file replaced by junk or gone (rotated while the site ran), or an address
    without a port, was said as "cannot be reached", with firewall advice."""
    from fedsyn.client.ops.tls_probe import probe

    junk = tmp_path / "ca.crt"
    junk.write_text("not a certificate\n")
    for ca in (junk, tmp_path / "gone.crt"):
        found = probe("127.0.0.1:9", ca)
        assert found.unreachable is None and found.unusable is not None, found
        assert f"root_certificates {ca} cannot be read as a CA certificate" in found.unusable, found
    found = probe("localhost", junk)
    assert found.unreachable is None and "`superlink` in the site policy" in str(found.unusable), found


def test_a_give_up_before_flowers_ssl_line_is_diagnosed_by_a_handshake_of_its_own(tmp_path):
    """Operator finding M4: a give-up could stop the SuperNode before Flower printed its [SSL] line,
    and the site's message said only "network or TLS certificate". The supervisor now shakes hands
    itself with the site's root_certificates and names the problem and the file."""
    from fedsyn.client.ops.supervise import SiteRuntime
    from fedsyn.trust.certs import create_ca, create_server_certificate

    create_ca(tmp_path / "certs")
    create_ca(tmp_path / "other", name="another coordinator CA")
    create_server_certificate(tmp_path / "certs", ["127.0.0.1"])
    out = io.StringIO()
    with _tls_server(tmp_path / "certs") as port:
        site = SiteRuntime(folder=tmp_path, superlink=f"127.0.0.1:{port}",
                           root_certificates=tmp_path / "other" / "ca.crt")
        code = supervise([sys.executable, "-c", HANGS_AFTER_GIVING_UP], {}, out, site=site)
    said = out.getvalue()
    assert code == EXIT_LOST_COORDINATOR and "network or TLS certificate" not in said, said
    assert "signed by another CA" in said and f"root_certificates: {tmp_path / 'other' / 'ca.crt'}" in said, said

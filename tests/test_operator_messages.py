"""The operator's second day: Flower's one-line errors at a site, each followed by the line that
sends the operator the right way. The Flower lines are the ones flower-supernode 1.41 printed
on loopback (a SuperNode restarted 12 s after a crash, a server certificate issued for another
name, a site trusting another CA); small Python programs stand in for the SuperNode."""

from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedsyn.cli.main import app
from fedsyn.client.ops.supervise import EXIT_LOST_COORDINATOR, RECORD, SiteRuntime, supervise
from fedsyn.data.demo import demo_schema_path
from fedsyn.simulations.run import prepare_sites
from tests.helpers import expired_certificate

REFUSED = ("print('ERROR : Exit Code: 305\\nFailed to initialize the connection to the SuperLink.\\n"
           "[code: 2004] Failed to activate SuperNode.', flush=True)\nraise SystemExit(1)\n")
MISMATCH = ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: IP address mismatch, certificate is not valid "
            "for '127.0.0.1'. (_ssl.c:1006)")
OTHER_CA = "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: certificate signature failure (_ssl.c:1006)"
EXPIRED = "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: certificate has expired (_ssl.c:1006)"
WITHHELD = ("ERROR : request failed with PermissionError\nTraceback (most recent call last):\n"
            "PermissionError (message withheld: FEDSYN_DEBUG=1 shows it)")


def _printing(text: str, code: int = 1) -> list[str]:
    return [sys.executable, "-c", f"print({text!r}, flush=True)\nraise SystemExit({code})"]


def _site(tmp_path: Path, **record: object) -> SiteRuntime:
    key = tmp_path / "auth.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\nsite key\n-----END PRIVATE KEY-----\n")
    if record:
        (tmp_path / RECORD).write_text(json.dumps(record))
    return SiteRuntime(tmp_path, key_file=key)


def _key_print(site: SiteRuntime) -> str:
    import hashlib

    return hashlib.sha256(site.key_file.read_bytes()).hexdigest()[:16]


def test_a_restart_within_the_minute_flower_lists_the_old_node_waits_and_retries(tmp_path):
    """The first start is refused (the SuperLink still lists this site's node, alive 72 s ago by
    the record, i.e. its entry is about to expire); the supervisor waits, starts it again and the
    second start is accepted."""
    node = tmp_path / "node.py"
    node.write_text("import pathlib, sys\nmarker = pathlib.Path(sys.argv[1])\n"
                    "if not marker.exists():\n    marker.write_text('1')\n    exec(" + repr(REFUSED) + ")\n"
                    "print('INFO : SuperNode ID: 2234876404430693805', flush=True)\n")
    site = _site(tmp_path, node_id="2234876404430693805", last_alive=time.time() - 72)
    site = SiteRuntime(site.folder, key_file=site.key_file)
    out = io.StringIO()
    started = time.monotonic()
    code = supervise([sys.executable, str(node), str(tmp_path / "ran-once")], {}, out, site=site)
    text = out.getvalue()
    assert code == 0, text
    assert "still lists this site's previous SuperNode (node 2234876404430693805" in text
    assert "trying again in" in text and "does not know this site's key" not in text
    assert text.count("SuperNode ID") == 1 and time.monotonic() - started < 30
    record = json.loads((tmp_path / RECORD).read_text())
    assert record["node_id"] == "2234876404430693805" and record["last_alive"] > time.time() - 30


def test_a_new_key_refused_is_told_to_register_not_to_wait_for_the_old_node(tmp_path):
    """helper-98 M5: a site given a new, unregistered key was first told that the SuperLink still
    listed its previous SuperNode and that there was nothing to do, for the old node's minute."""
    site = _site(tmp_path, node_id="77", key="another key's print", last_alive=time.time() - 20)
    out = io.StringIO()
    started = time.monotonic()
    assert supervise([sys.executable, "-c", REFUSED], {}, out, site=site) == 1
    text = out.getvalue()
    assert "does not know this site's key" in text and "still lists this site's previous SuperNode" not in text
    assert "trying again" not in text and time.monotonic() - started < 20


def test_an_expired_or_missing_ca_certificate_is_named_before_joining(tmp_path, small_frame, caplog):
    """helper-98 M5: an expired root_certificates was told as the coordinator's expired server
    certificate, whose renewal does not help; a missing one in Flower's words, without its path."""
    import logging

    from fedsyn.client.ops.launch import supernode_launch
    from fedsyn.client.policy import CoordinatorConnection, PolicyError, SitePolicy

    path = prepare_sites([small_frame], demo_schema_path(), tmp_path, epsilon=1.0, delta=1e-5).policies[0]
    for root, said in ((tmp_path / "nowhere" / "ca.crt", "root_certificates file not found"),
                       (expired_certificate(tmp_path / "old-ca.crt"), "CA certificate expired on")):
        connection = CoordinatorConnection(superlink="127.0.0.1:9092", root_certificates=root,
                                           auth_private_key=tmp_path / "auth.key")
        SitePolicy.load(path).model_copy(update={"coordinator": connection}).save(path)
        with pytest.raises(PolicyError, match=said) as refused:
            supernode_launch(path)
        assert str(root) in str(refused.value)
    assert "renewing only the server certificate does not help" in str(refused.value)

    # helper-100: while the coordinator rotates its CA a site trusts the old and the new one;
    # the old one's expiry first in the bundle is no reason to refuse
    from fedsyn.trust.certs import create_ca

    new_ca, _ = create_ca(tmp_path / "new-ca")
    bundle = tmp_path / "bundle.crt"
    bundle.write_bytes(expired_certificate(tmp_path / "old.crt").read_bytes() + new_ca.read_bytes())
    connection = CoordinatorConnection(superlink="127.0.0.1:9092", root_certificates=bundle,
                                       auth_private_key=tmp_path / "auth.key")
    SitePolicy.load(path).model_copy(update={"coordinator": connection}).save(path)
    with caplog.at_level(logging.WARNING, logger="fedsyn.client"):
        assert supernode_launch(path).command[:1]
    assert "a CA certificate in it expired on" in caplog.text  # said, not refused (helper-103)


def test_a_site_trusting_the_old_and_the_new_ca_reaches_either_server_whatever_their_order(tmp_path):
    """Rotating the CA was a cut-over: `certs init --force` named every CA alike, and TLS checked a
    server against the first CA of its issuer's name in a site's bundle, so the new CA first
    refused the old server (helper-115 found the docs and the launch check at odds). Named apart
    and with key identifiers, both orders reach both servers over gRPC, as a SuperNode connects."""
    from concurrent import futures

    import grpc

    from fedsyn.trust.certs import create_ca, create_server_certificate

    cas = {label: create_ca(tmp_path / label)[0].read_bytes() for label in ("old", "new")}
    for label in ("old", "new"):
        crt, key = create_server_certificate(tmp_path / label, ["127.0.0.1"])
        server = grpc.server(futures.ThreadPoolExecutor(1))
        port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key.read_bytes(),
                                                                                    crt.read_bytes())]))
        server.start()
        try:
            for bundle in (cas["old"] + cas["new"], cas["new"] + cas["old"]):
                channel = grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(bundle))
                grpc.channel_ready_future(channel).result(timeout=10)  # raises if the handshake fails
                channel.close()
        finally:
            server.stop(0)


def test_a_key_accepted_before_and_refused_now_points_at_a_copy_of_the_key(tmp_path):
    site = _site(tmp_path)
    site = _site(tmp_path, node_id="77", key=_key_print(site), last_alive=time.time() - 3600)
    out = io.StringIO()
    code = supervise([sys.executable, "-c", REFUSED], {}, out, site=site)
    text = out.getvalue()
    assert code == 1 and "trying again" not in text  # no retry: waiting would not help
    assert "accepted this site's key before (node 77)" in text and "copy of this key" in text
    assert "fedsyn certs site-key" in text and "does not know this site's key" not in text


def test_a_key_never_accepted_is_told_to_register_or_look_for_a_copy(tmp_path):
    out = io.StringIO()
    assert supervise([sys.executable, "-c", REFUSED], {}, out, site=_site(tmp_path)) == 1
    text = out.getvalue()
    assert "does not know this site's key" in text and "fedsyn server sites add auth.pub" in text
    assert "another SuperNode using the same key is online" in text


@pytest.mark.parametrize(("line", "said", "not_said"), [
    (MISMATCH, "does not name the address this site dials (127.0.0.1", "another CA"),
    (OTHER_CA, "signed by another CA", "does not name"),
    (EXPIRED, "has expired: ask the coordinator to renew it", "another CA"),
], ids=["hostname-mismatch", "another-ca", "expired"])
def test_each_tls_failure_is_told_its_own_way(tmp_path, line, said, not_said):
    """Said once, and the SuperNode's exit on it is the lost coordinator's 75 that `client start
    --help` documents (Flower's own code is 1), so a service manager retries it."""
    out = io.StringIO()
    code = supervise(_printing("ERROR : SSL/TLS handshake error detected.\n" + line), {}, out)
    assert code == EXIT_LOST_COORDINATOR
    hints = [row for row in out.getvalue().splitlines() if row.startswith("fedsyn:")]
    assert len(hints) == 1 and said in hints[0] and not_said not in hints[0]


def test_a_round_that_hit_an_unwritable_file_names_it_at_the_site(tmp_path, monkeypatch):
    """The site's log withholds the exception's text (it may quote patient values); the supervisor
    names the site's own file this user cannot write, on the site's terminal. Running as root
    ignores file modes, so the operating system's answer is simulated."""
    ledger_folder = tmp_path / "site"
    ledger_folder.mkdir()
    site = SiteRuntime(ledger_folder, writes=(ledger_folder / "ledger.json", ledger_folder / "ledger.json.lock"))
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: real_access(path, mode) and Path(path) != ledger_folder)
    out = io.StringIO()
    supervise(_printing(WITHHELD), {}, out, site=site)
    hint = [row for row in out.getvalue().splitlines() if row.startswith("fedsyn:")]
    assert len(hint) == 1 and f"{ledger_folder} is not writable by uid {os.getuid()}" in hint[0]


def test_client_start_refuses_to_join_with_an_unwritable_ledger_folder(tmp_path, demo_frame, monkeypatch):
    plan = prepare_sites([demo_frame.head(200)], demo_schema_path(), tmp_path / "sites", 1.0, 1e-5)
    folder = plan.policies[0].parent
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: real_access(path, mode) and Path(path) != folder)
    (folder / "ledger.json.lock").unlink(missing_ok=True)
    result = CliRunner().invoke(app, ["client", "start", "--config", str(plan.policies[0])])
    squeezed = "".join(result.output.split())  # the console wraps long paths anywhere
    assert result.exit_code != 0 and "notjoining" in squeezed
    assert f"{folder}isnotwritablebyuid{os.getuid()}".replace(" ", "") in squeezed


def test_a_missing_state_folder_and_a_read_only_one_are_named_for_what_they_are(tmp_path, monkeypatch):
    """helper-78: a site with no state yet was told four times, identically, that its folder was
    'not writable (No such file or directory)' and to grant write access; on a read-only mount,
    owner and mode were fine and the real cause went unnamed."""
    from fedsyn.client.ops.supervise import writability_problems

    missing = tmp_path / "state"
    said = writability_problems([missing / "ledger.json", missing / "ledger.json.lock", missing / "audit.jsonl"])
    assert said == [f"{missing} does not exist: create the site's state with `fedsyn client ledger init`"]
    missing.mkdir()
    real_access, real_statvfs = os.access, os.statvfs
    monkeypatch.setattr(os, "access", lambda path, mode: real_access(path, mode) and Path(path) != missing)

    class ReadOnly:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(os, "statvfs", lambda path: ReadOnly() if Path(path) == missing else real_statvfs(path))
    assert writability_problems([missing / "ledger.json"]) == [f"{missing} is on a read-only file system: mount it "
                                                                "writable"]

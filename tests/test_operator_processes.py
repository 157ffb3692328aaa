"""The operator's second day, with real processes: a `fedsyn client start` killed with SIGKILL
takes its SuperNode and everything the SuperNode started with it, a SuperNode group an earlier
supervisor left behind is stopped before the next start, and a local port held by something
else is refused with its holder named. A small Python program stands in for flower-supernode:
it listens on the site's local port and starts a helper, as the SuperNode starts its SuperExec."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedsyn.client.ops.supervise import EXIT_CANNOT_START, RECORD, SiteRuntime, supervise

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux's")

# argv: port, who listens ("node" or "helper"). Prints "ready NODE_PID HELPER_PID" once listening.
NODE = """
import socket, subprocess, sys, time
port, listener = int(sys.argv[1]), sys.argv[2]
code = "import socket, sys, time\\n" + \\
       ("s = socket.socket(); s.bind(('127.0.0.1', %d)); s.listen()\\n" % port if listener == "helper" else "") + \\
       "print('helper', flush=True); time.sleep(600)"
helper = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
helper.stdout.readline()
if listener == "node":
    server = socket.socket(); server.bind(("127.0.0.1", port)); server.listen()
import os
print("ready", os.getpid(), helper.pid, flush=True)
time.sleep(600)
"""
# Binds the site's port (fails with 'address already in use' if anything holds it), then exits 0.
BINDS = "import socket, sys; s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); print('bound', flush=True)"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _wait(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _pids(log: Path) -> tuple[int, int]:
    """The stand-in SuperNode's pid and its helper's, from its 'ready NODE HELPER' line."""
    found = re.search(r"^ready (\d+) (\d+)$", log.read_text(), re.MULTILINE)
    assert found, log.read_text()
    return int(found.group(1)), int(found.group(2))


def _start_supervisor(tmp_path: Path, port: int, listener: str, with_site: bool) -> tuple[subprocess.Popen, Path]:
    """`fedsyn client start`'s supervisor in a process of its own, its output in a file."""
    node = tmp_path / "node.py"
    node.write_text(NODE)
    site = f", site=SiteRuntime(Path({str(tmp_path)!r}), local_port={port})" if with_site else ""
    script = ("import sys\nfrom pathlib import Path\nfrom fedsyn.client.ops.supervise import SiteRuntime, supervise\n"
              f"sys.exit(supervise([sys.executable, {str(node)!r}, '{port}', '{listener}'], {{}}{site}))\n")
    log = tmp_path / "supervisor.log"
    process = subprocess.Popen([sys.executable, "-c", script], stdout=open(log, "w"), stderr=subprocess.STDOUT)
    _wait(lambda: re.search(r"^ready ", log.read_text(), re.MULTILINE), 30, "the stand-in SuperNode")
    return process, log


def test_a_killed_supervisor_takes_its_node_and_the_nodes_helpers_with_it(tmp_path):
    port = _free_port()
    supervisor, log = _start_supervisor(tmp_path, port, "node", with_site=False)
    node, helper = _pids(log)
    assert not _gone(node) and not _gone(helper)
    supervisor.send_signal(signal.SIGKILL)  # as `kill -9`, or the OOM killer
    supervisor.wait()
    try:
        _wait(lambda: _gone(node) and _gone(helper), 10, "the orphaned SuperNode and its helper to stop")
    finally:
        for pid in (node, helper):
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
    out = _run_supervise(tmp_path, port)  # the restart binds the port again: no 'address already in use'
    assert "bound" in out


def _run_supervise(tmp_path: Path, port: int, **site: object) -> str:
    from io import StringIO

    out = StringIO()
    code = supervise([sys.executable, "-c", BINDS, str(port)], {}, out,
                     site=SiteRuntime(tmp_path, local_port=port, **site))
    assert code == 0, out.getvalue()
    return out.getvalue()


def test_a_node_group_left_by_an_earlier_supervisor_is_stopped_before_the_next_start(tmp_path):
    """The supervisor and the group's leader both die by SIGKILL (`kill -9` of both): the node
    follows its leader, but the helper it started keeps the site's local port."""
    port = _free_port()
    supervisor, log = _start_supervisor(tmp_path, port, "helper", with_site=True)
    node, helper = _pids(log)
    leader = json.loads((tmp_path / RECORD).read_text())["group"]["pgid"]
    os.kill(leader, signal.SIGKILL)
    supervisor.send_signal(signal.SIGKILL)
    supervisor.wait()
    try:
        _wait(lambda: _gone(node), 10, "the node to follow its leader")
        assert not _gone(helper)  # the left-over helper still holds the port
        out = _run_supervise(tmp_path, port)
    finally:
        if not _gone(helper):
            os.kill(helper, signal.SIGKILL)
    assert "left running by an earlier `fedsyn client start`" in out and f"local port {port}" in out
    assert "bound" in out and _gone(helper)
    assert "group" not in json.loads((tmp_path / RECORD).read_text())  # a clean stop leaves no group behind


def test_a_local_port_held_by_another_process_is_refused_naming_the_holder(tmp_path):
    from io import StringIO

    port = _free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        out = StringIO()
        code = supervise([sys.executable, "-c", BINDS, str(port)], {}, out,
                         site=SiteRuntime(tmp_path, local_port=port))
    text = out.getvalue()
    assert code == EXIT_CANNOT_START and "bound" not in text
    assert f"local port {port}" in text and f"pid {os.getpid()}" in text and "ss -ltnp" in text


def test_a_live_supervisor_of_the_same_site_is_left_alone(tmp_path):
    from io import StringIO

    port = _free_port()
    other, log = _start_supervisor(tmp_path, port, "node", with_site=True)
    try:
        out = StringIO()
        launched: list[bool] = []  # helper-98 H2: the refused start rewrote the running one's launcher first
        code = supervise([sys.executable, "-c", BINDS, str(port)], {}, out,
                         site=SiteRuntime(tmp_path, local_port=port), before_start=lambda: launched.append(True))
        assert code == EXIT_CANNOT_START and f"(pid {other.pid}) already runs this site's SuperNode" in out.getvalue()
        assert other.poll() is None and not launched
    finally:
        other.terminate()
        other.wait(timeout=30)
    assert "ready" in log.read_text()


def test_the_launcher_is_written_only_by_a_start_that_goes_ahead(tmp_path, small_frame):
    """helper-98 H2: checking the extract wrote the site's flwr-clientapp launcher, naming the
    policy file given, before a duplicate start was refused: the running SuperNode's apps then
    read the other file. The check writes nothing; the start writes it once it is the only one."""
    from fedsyn.client.ops.clientapp_process import FLOWER_COMMAND
    from fedsyn.client.ops.launch import supernode_launch
    from fedsyn.client.policy import CoordinatorConnection, SitePolicy
    from fedsyn.data.demo import demo_schema_path
    from fedsyn.simulations.run import prepare_sites
    from fedsyn.trust.certs import create_ca

    path = prepare_sites([small_frame], demo_schema_path(), tmp_path, epsilon=1.0, delta=1e-5).policies[0]
    connection = CoordinatorConnection(superlink="127.0.0.1:9092", root_certificates=create_ca(tmp_path / "ca")[0],
                                       auth_private_key=tmp_path / "auth.key")
    SitePolicy.load(path).model_copy(update={"coordinator": connection}).save(path)
    launch = supernode_launch(path)
    assert launch.command and not (launch.launcher_folder / FLOWER_COMMAND).exists()
    # helper-118 M1: a shared ~/.flwr held other Apps a run could name; the site's Flower home is its own
    assert launch.environment["FLWR_HOME"] == str((launch.launcher_folder.parent / "flower-home").resolve())
    launch.install()
    assert str(path.resolve()) in (launch.launcher_folder / FLOWER_COMMAND).read_text()


def test_client_start_writes_the_launcher_before_the_supernode_starts(tmp_path, small_frame, monkeypatch):
    """The launcher is what puts the App check (approved_apps) in front of every bundle: a start
    that never wrote it would run the venv's own flwr-clientapp, unchecked (helper-100 M-6)."""
    from typer.testing import CliRunner

    from fedsyn.cli.main import app
    from fedsyn.client.ops import supervise as supervise_module
    from fedsyn.client.ops.clientapp_process import FLOWER_COMMAND
    from fedsyn.client.policy import CoordinatorConnection, SitePolicy
    from fedsyn.data.demo import demo_schema_path
    from fedsyn.simulations.run import prepare_sites
    from fedsyn.trust.certs import create_ca

    path = prepare_sites([small_frame], demo_schema_path(), tmp_path, epsilon=1.0, delta=1e-5).policies[0]
    connection = CoordinatorConnection(superlink="127.0.0.1:9092", root_certificates=create_ca(tmp_path / "ca")[0],
                                       auth_private_key=tmp_path / "auth.key")
    policy = SitePolicy.load(path).model_copy(update={"coordinator": connection})
    policy.save(path)
    launcher = policy.ledger.parent / "flower-bin" / FLOWER_COMMAND
    seen: list[bool] = []

    def started(command, environment, out=None, poll_seconds=0.5, site=None, before_start=None):
        if before_start is not None:
            before_start()
        seen.append(launcher.exists())  # as the SuperNode would find it, first on its PATH
        return 0

    monkeypatch.setattr(supervise_module, "supervise", started)
    result = CliRunner().invoke(app, ["client", "start", "-c", str(path)])
    assert result.exit_code == 0, result.output
    assert seen == [True] and str(path.resolve()) in launcher.read_text()


@pytest.mark.slow
def test_a_real_site_killed_with_sigkill_rejoins_by_itself(demo_frame, tmp_path):
    """Real Flower on loopback. `fedsyn client start` is killed with SIGKILL once its SuperNode
    is accepted: the SuperNode goes with it (and signs off), so a restart right away joins, with
    no 'address already in use'. Then the supervisor and its whole SuperNode group are killed
    with SIGKILL (a crash: nothing signs off): the SuperLink still lists the dead node for about
    a minute, and the restart says so, waits, and joins, instead of sending the operator to
    register the key. The lighter tests above and in tests/test_operator_messages.py cover the
    same code with stand-ins."""
    from tests.test_deployment import Deployment

    if shutil.which("flower-superlink", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("Flower's deployment binaries are not installed")
    deployment = Deployment(tmp_path / "deployment", demo_frame.sample(300, random_state=0), sites=1, rounds=1,
                            min_sites=1)
    policy = deployment.plan.policies[0]
    log = policy.parent / "node.log"
    port = json.loads(policy.read_text())["coordinator"]["local_port"]
    deadline = time.monotonic() + 400

    def joins(supervisor: subprocess.Popen | None) -> subprocess.Popen:
        joined = log.read_text().count("SuperNode ID") if log.exists() else 0
        if supervisor is not None:
            _wait(lambda: not _listening(port), 30, "the SuperNode to let go of its local port")
        started = deployment.start_client(0)
        deployment.wait_for(lambda: log.read_text().count("SuperNode ID") > joined, "the site to join", deadline)
        return started

    try:
        deployment.start_superlink()
        deployment.register(0)
        first = joins(None)
        first.send_signal(signal.SIGKILL)
        first.wait()
        second = joins(first)
        assert "address already in use" not in log.read_text().lower()
        group = json.loads((policy.parent / RECORD).read_text())["group"]["pgid"]
        os.killpg(group, signal.SIGKILL)
        second.send_signal(signal.SIGKILL)
        second.wait()
        crashed = len(log.read_text())
        third = joins(second)
        text = log.read_text()[crashed:]
        assert "still lists this site's previous SuperNode" in text and "trying again in" in text
        assert "does not know this site's key" not in log.read_text()
        assert "address already in use" not in log.read_text().lower() and third.poll() is None
    finally:
        deployment.stop()


def _listening(port: int) -> bool:
    from fedsyn.client.ops.supervise import port_in_use

    return port_in_use(port)

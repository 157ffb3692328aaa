"""Real processes on loopback: a TLS SuperLink with node authentication, three hospital
SuperNodes, an unregistered node and a node trusting another CA. The test starts and
stops every process itself and is bounded in time."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fedsyn.client.ops.launch import supernode_launch
from fedsyn.client.policy import SitePolicy
from fedsyn.data.demo import demo_schema_path
from fedsyn.data.tables import read_table
from fedsyn.data.validation import validate_frame
from fedsyn.privacy.accounting import PrivacyLedger
from fedsyn.server.ops.superlink import APP_DIR, CoordinatorConfig, app_bundle_hash
from fedsyn.simulations.run import prepare_sites
from fedsyn.simulations.split import split_table
from fedsyn.trust.certs import create_ca, create_server_certificate, create_site_keypair

pytestmark = pytest.mark.skipif(shutil.which("flower-superlink", path=str(Path(sys.executable).parent)) is None,
                                reason="Flower's deployment binaries are not installed")
DEADLINE_S = 900  # a guard against a hang: the test took 236 s on an unloaded 2-core machine, 309 s beside
# the suite's other worker


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _update_policy(policy_path: Path, **fields: object) -> None:
    policy_path.write_text(json.dumps({**json.loads(policy_path.read_text()), **fields}))


def _connection(superlink: str, ca: Path) -> dict:
    """A site policy's [coordinator] section; each node on this host gets its own loopback port."""
    return {"superlink": superlink, "root_certificates": str(ca), "auth_private_key": "auth.key",
            "local_port": free_port()}


class Deployment:
    """A coordinator and hospitals as real processes on loopback; everything is stopped at the end."""

    def __init__(self, root: Path, frame, sites: int, rounds: int, min_sites: int, timeout: float = 120.0,
                 epsilon: float = 1.0):
        self.root = root
        self.processes: list[subprocess.Popen] = []
        self.nodes: dict[int, subprocess.Popen] = {}
        self.env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        self.certs, self.rogue_ca = root / "certs", root / "rogue-ca"
        create_ca(self.certs)
        create_server_certificate(self.certs, ["localhost", "127.0.0.1"])
        create_ca(self.rogue_ca)
        port = free_port()
        tables = split_table(frame, sites, np.random.default_rng(0))
        self.plan = prepare_sites(tables, demo_schema_path(), root / "sites", 1.0, 1e-5)
        for policy in self.plan.policies:
            create_site_keypair(policy.parent)
            _update_policy(policy, coordinator=_connection(f"127.0.0.1:{port}", self.certs / "ca.crt"))
        (root / "server.toml").write_text(
            f'port = {port}\ndatabase = "state/superlink.db"\nflwr_home = "state/flwr-home"\n'
            f'[run]\nschema = "{demo_schema_path()}"\nout = "{root / "release"}"\nrows = 200\nrounds = {rounds}\n'
            f'local-steps = 3\nsample-rate = 0.2\nmin-sites = {min_sites}\nround-timeout = {timeout}\n'
            f'epsilon = {epsilon}\n'
            f'audit-log = "{root / "audit.jsonl"}"\nstate = "state/run"\n')
        self.coordinator = CoordinatorConfig.load(root / "server.toml")
        self.env.update(self.coordinator.flwr_environment())

    def _start(self, command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
        process = subprocess.Popen(command, env={**self.env, **(env or {})}, stdout=open(log, "a"),
                                   stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def start_superlink(self) -> subprocess.Popen:
        self.superlink = self._start(self.coordinator.superlink_command(), self.root / "link.log")
        return self.superlink

    def register(self, index: int) -> None:
        command = self.coordinator.supernode_command("register", str(self.plan.policies[index].parent / "auth.pub"))
        for _ in range(30):  # the SuperLink needs a few seconds before it answers
            registered = subprocess.run(command, env=self.env, capture_output=True, text=True)
            if registered.returncode == 0:
                return
            time.sleep(1)
        raise AssertionError(registered.stdout + registered.stderr)

    def start_node(self, index: int) -> None:
        policy = self.plan.policies[index]
        launch = supernode_launch(policy)
        launch.install()
        self.nodes[index] = self._start(launch.command, policy.parent / "node.log", launch.environment)

    def start_client(self, index: int) -> subprocess.Popen:
        """``fedsyn client start``, as the hospital's service manager runs it."""
        policy = self.plan.policies[index]
        fedsyn = str(Path(sys.executable).with_name("fedsyn"))
        self.nodes[index] = self._start([fedsyn, "client", "start", "-c", str(policy)], policy.parent / "node.log")
        return self.nodes[index]

    def submit(self, *options: str) -> subprocess.Popen:
        """``fedsyn server run``, as the coordinator's operator types it."""
        fedsyn = str(Path(sys.executable).with_name("fedsyn"))
        return self._start([fedsyn, "server", "run", "-c", str(self.root / "server.toml"), *options],
                           self.root / "run.log")

    def audit_events(self) -> list[dict]:
        path = self.root / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def wait_for(self, condition, what: str, deadline: float) -> None:
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(1)

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture()
def deployment_factory(tmp_path):
    made: list[Deployment] = []

    def make(**kwargs) -> Deployment:
        made.append(Deployment(tmp_path / f"deployment-{len(made)}", **kwargs))
        return made[-1]

    yield make
    for deployment in made:
        deployment.stop()


def test_tls_superlink_with_node_auth_runs_registered_sites_only(demo_frame, demo_schema, deployment_factory):
    deadline = time.monotonic() + DEADLINE_S
    # One training round; a message may take a while to answer when every process starts at once on two cores.
    deployment = deployment_factory(frame=demo_frame.sample(1000, random_state=0), sites=5, rounds=1, min_sites=3,
                                    timeout=300.0)
    plan, root = deployment.plan, deployment.root
    _update_policy(plan.policies[4], coordinator=_connection(f"127.0.0.1:{deployment.coordinator.port}",
                                                             deployment.rogue_ca / "ca.crt"))
    _update_policy(plan.policies[0], approved_apps=[app_bundle_hash()])  # pins the App the coordinator published
    deployment.start_superlink()
    for index in (0, 1, 2, 4):  # site 3 is never registered; site 4 trusts another CA
        deployment.register(index)
    unregistered, distrusting = deployment.start_client(3), deployment.start_client(4)  # as systemd runs them
    # Its SuperNode failed the handshake and exited, leaving its SuperExec retrying: the supervisor stopped
    # both and exited non-zero, so the service manager restarts the node (once the certificate is fixed, it joins).
    deployment.wait_for(lambda: distrusting.poll() is not None, "the distrusting node to exit", deadline)
    assert distrusting.returncode != 0
    deployment.wait_for(lambda: unregistered.poll() is not None, "the unregistered node to exit", deadline)
    assert unregistered.returncode != 0
    assert "fedsyn server sites add auth.pub" in (plan.policies[3].parent / "node.log").read_text()
    node_log = (plan.policies[4].parent / "node.log").read_text()
    assert "SSL" in node_log or "certificate" in node_log.lower()
    for index in range(3):
        deployment.start_node(index)
    run = deployment.submit()
    retried = deployment.start_client(3)  # restarted by its service manager while the run is live
    deployment.wait_for(lambda: retried.poll() is not None, "the unregistered node to exit again", deadline)
    assert retried.returncode != 0
    deployment.wait_for(lambda: run.poll() is not None, "the run", deadline)
    assert run.returncode == 0, (root / "run.log").read_text()[-2000:]
    deployment.wait_for((root / "release" / "privacy_report.json").exists, "the release", deadline)
    report = json.loads((root / "release" / "privacy_report.json").read_text())
    assert sorted(site["site"] for site in report["sites"]) == ["site-0", "site-1", "site-2"]
    assert all(site["within_budget"] and len(site["rounds_accepted"]) == 2 for site in report["sites"])
    assert validate_frame(read_table(root / "release" / "synthetic.csv", demo_schema), demo_schema).ok
    for index in (3, 4):  # never took part: nothing spent
        assert PrivacyLedger.load(SitePolicy.load(plan.policies[index]).ledger).events == []
    # The same run again: the sites that took part have spent their whole max_epsilon, so it fails before
    # anything is charged, and says so with its exit code (77: no budget left).
    refused = deployment.submit()
    deployment.wait_for(lambda: refused.poll() is not None, "the refused run", time.monotonic() + DEADLINE_S)
    assert refused.returncode == 77 and "raise max_epsilon in their site policy" in (root / "run.log").read_text()

    # The coordinator now pushes its own ClientApp code: no site installs or runs it, nothing is spent.
    spent = {index: PrivacyLedger.load(SitePolicy.load(plan.policies[index]).ledger).epsilon() for index in (0, 1, 2)}
    marker = root / "coordinator-code-ran-at-a-site"
    hostile = _hostile_app(root / "hostile-app", marker)
    command = deployment.coordinator.run_command()
    command[command.index(str(APP_DIR))] = str(hostile)
    refused = deployment._start(command + ["--stream"], root / "hostile-run.log")
    deployment.wait_for(lambda: refused.poll() is not None, "the hostile run", deadline)
    assert not marker.exists()
    for index, why in ((0, "not in this site's approved_apps"), (1, "hostile_client.py"), (2, "hostile_client.py")):
        policy = SitePolicy.load(plan.policies[index])
        refusal = json.loads(policy.audit_trail.read_text().splitlines()[-1])
        assert refusal["event"] == "app-refused" and why in refusal["reason"]
        assert PrivacyLedger.load(policy.ledger).epsilon() == spent[index]
    assert "UntrustedAppError" in (root / "hostile-run.log").read_text()  # the coordinator is told why


def _hostile_app(folder: Path, marker: Path) -> Path:
    """fedsyn's own App, but with a ClientApp of the coordinator's that would leave ``marker`` if it ran."""
    folder.mkdir()
    project = (APP_DIR / "pyproject.toml").read_text()
    (folder / "pyproject.toml").write_text(project.replace("fedsyn.client.deploy:app", "hostile_client:app"))
    (folder / "hostile_client.py").write_text(
        "from pathlib import Path\nfrom flwr.clientapp import ClientApp\n"
        f"Path({str(marker)!r}).write_text('ran')\napp = ClientApp()\n")
    return folder


@pytest.mark.slow
def test_site_stop_and_coordinator_restart_with_real_processes(demo_frame, demo_schema, deployment_factory):
    """A hospital's SuperNode is killed after round 1: later rounds go on with the other two
    and the report names it. Then the SuperLink is killed in the middle of a second run: that
    run fails loudly, no ledger forgets what it spent, after a restart on the same database
    the registered hospitals reconnect by themselves, and ``fedsyn server run --resume``
    finishes the run without any hospital paying twice for a round."""
    deadline = time.monotonic() + 2 * DEADLINE_S
    deployment = deployment_factory(frame=demo_frame.sample(900, random_state=0), sites=3, rounds=3, min_sites=2,
                                    timeout=40.0, epsilon=0.5)
    root = deployment.root
    deployment.start_superlink()
    for index in range(3):
        deployment.register(index)
        deployment.start_node(index)

    def finished(round_: int) -> bool:
        return any(e["event"] == "round_finished" and e["round"] >= round_ for e in deployment.audit_events())

    run = deployment.submit()
    deployment.wait_for(lambda: finished(1), "round 1", deadline)
    deployment.nodes[2].terminate()
    deployment.wait_for(lambda: run.poll() is not None, "the run with one site stopped", deadline)
    report = json.loads((root / "release" / "privacy_report.json").read_text())
    stopped = next(site for site in report["sites"] if site["site"] == "site-2")
    assert stopped["dropped"] and stopped["dropped"][0]["round"] >= 2
    assert all(len(site["rounds_accepted"]) == 4 for site in report["sites"] if site["site"] != "site-2")
    spent = {i: PrivacyLedger.load(SitePolicy.load(p).ledger).epsilon() for i, p in enumerate(deployment.plan.policies)}
    first_run = {i: len(PrivacyLedger.load(SitePolicy.load(p).ledger).events)
                 for i, p in enumerate(deployment.plan.policies)}

    # The coordinator asks for more (cumulative) budget, then dies in the middle of the run.
    server_toml = root / "server.toml"
    server_toml.write_text(server_toml.read_text().replace("epsilon = 0.5", "epsilon = 1.0"))
    deployment.coordinator = CoordinatorConfig.load(server_toml)
    deployment.start_node(2)
    (root / "audit.jsonl").unlink()
    interrupted = deployment.submit()
    deployment.wait_for(lambda: finished(1), "round 1 of the second run", deadline)
    deployment.superlink.kill()
    deployment.wait_for(lambda: interrupted.poll() is not None, "the interrupted run to end", deadline)
    assert not finished(3), "the interrupted run must not complete"
    after_crash = {i: PrivacyLedger.load(SitePolicy.load(p).ledger) for i, p in enumerate(deployment.plan.policies)}
    assert all(after_crash[i].epsilon() > spent[i] for i in (0, 1))  # the part spent before the crash is kept
    assert all(ledger.epsilon() <= 1.0 + 1e-9 for ledger in after_crash.values())

    # Restart on the same database: registrations survive and the hospitals reconnect by themselves.
    deployment.start_superlink()

    def online() -> int:
        listed = subprocess.run(deployment.coordinator.supernode_command("list") + ["--format", "json"],
                                env=deployment.env, capture_output=True, text=True)
        try:
            return sum(node["status"] == "online" for node in json.loads(listed.stdout)["nodes"])
        except (json.JSONDecodeError, KeyError):
            return 0

    deployment.wait_for(lambda: online() == 3, "the three registered hospitals to reconnect", deadline)

    # Resume: the run goes on after its last completed round and finishes.
    resumed = deployment.submit("--resume")
    deployment.wait_for(lambda: resumed.poll() is not None, "the resumed run", deadline)
    assert resumed.returncode == 0, (root / "run.log").read_text()[-3000:]
    events = deployment.audit_events()
    assert len({e["run"] for e in events}) == 1  # one run, before and after the restart
    assert [e["round"] for e in events if e["event"] == "round_finished"] == [1, 2, 3]
    report = json.loads((root / "release" / "privacy_report.json").read_text())
    for site in report["sites"]:
        index = int(site["site"].removeprefix("site-"))
        ledger = PrivacyLedger.load(SitePolicy.load(deployment.plan.policies[index]).ledger)
        assert site["epsilon_cumulative"] == pytest.approx(ledger.epsilon(), rel=1e-9)
        this_run = ledger.events[first_run[index]:]
        # every round charged once, none twice: round 0 is two releases (the tables with the
        # votes, then the pair tables, at a larger multiplier: fedsyn.privacy.pairs), each once
        assert [e.round for e in this_run] == [0, 0, 1, 2, 3]
        assert this_run[0].noise_multiplier < this_run[1].noise_multiplier

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

from fedsyn.client.deploy import supernode_command
from fedsyn.client.policy import SitePolicy
from fedsyn.common.certs import create_ca, create_server_certificate, create_site_keypair
from fedsyn.common.data import demo_schema_path
from fedsyn.common.tables import read_table
from fedsyn.common.validation import DataValidationError, validate_frame
from fedsyn.server.deploy import CoordinatorConfig
from fedsyn.simulations.run import prepare_sites
from fedsyn.simulations.split import split_table

pytestmark = pytest.mark.skipif(shutil.which("flower-superlink", path=str(Path(sys.executable).parent)) is None,
                                reason="Flower's deployment binaries are not installed")
DEADLINE_S = 300


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _connect(policy_path: Path, superlink: str, ca: Path, index: int) -> None:
    raw = json.loads(policy_path.read_text())
    raw["coordinator"] = {"superlink": superlink, "root_certificates": str(ca), "auth_private_key": "auth.key",
                          "local_port": free_port()}
    policy_path.write_text(json.dumps(raw))


@pytest.fixture()
def processes():
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        process.terminate()
    for process in started:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def test_tls_superlink_with_node_auth_runs_registered_sites_only(demo_frame, demo_schema, tmp_path, processes):
    started = time.monotonic()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    certs, rogue_ca = tmp_path / "certs", tmp_path / "rogue-ca"
    create_ca(certs)
    create_server_certificate(certs, ["localhost", "127.0.0.1"])
    create_ca(rogue_ca)
    port = free_port()
    superlink = f"127.0.0.1:{port}"
    tables = split_table(demo_frame.sample(1000, random_state=0), 5, np.random.default_rng(0))
    plan = prepare_sites(tables, demo_schema_path(), tmp_path / "sites", 1.0, 1e-5)
    for index, policy in enumerate(plan.policies):  # 0-2 registered, 3 unregistered, 4 trusts another CA
        create_site_keypair(policy.parent)
        _connect(policy, superlink, (rogue_ca if index == 4 else certs) / "ca.crt", index)
    (tmp_path / "server.toml").write_text(
        f'port = {port}\ndatabase = "state/superlink.db"\nflwr_home = "state/flwr-home"\n'
        f'[run]\nschema = "{demo_schema_path()}"\nout = "{tmp_path / "release"}"\nrows = 200\nrounds = 2\n'
        f'local-steps = 3\nsample-rate = 0.2\nmin-sites = 3\naudit-log = "{tmp_path / "audit.jsonl"}"\n')
    coordinator = CoordinatorConfig.load(tmp_path / "server.toml")
    env.update(coordinator.flwr_environment())
    processes.append(subprocess.Popen(coordinator.superlink_command(), env=env, stdout=open(tmp_path / "link.log", "w"),
                                      stderr=subprocess.STDOUT))
    for policy in plan.policies[:3] + plan.policies[4:]:
        for _ in range(30):  # the SuperLink needs a few seconds before it answers
            command = coordinator.flwr_command("supernode", "register", str(policy.parent / "auth.pub"), "fedsyn")
            registered = subprocess.run(command, env=env, capture_output=True, text=True)
            if registered.returncode == 0:
                break
            time.sleep(1)
        assert registered.returncode == 0, registered.stdout + registered.stderr
    logs = [policy.parent / "node.log" for policy in plan.policies]
    for policy, log in zip(plan.policies, logs):
        processes.append(subprocess.Popen(supernode_command(policy), env=env, stdout=open(log, "w"),
                                          stderr=subprocess.STDOUT))
    run = subprocess.run(coordinator.run_command() + ["--stream"], env=env, capture_output=True, text=True,
                         timeout=DEADLINE_S)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    while not (tmp_path / "release" / "privacy_report.json").exists():
        assert time.monotonic() - started < DEADLINE_S, "no release within the deadline"
        time.sleep(1)
    report = json.loads((tmp_path / "release" / "privacy_report.json").read_text())
    assert sorted(site["site"] for site in report["sites"]) == ["site-0", "site-1", "site-2"]
    assert all(site["within_budget"] and len(site["rounds_accepted"]) == 3 for site in report["sites"])
    assert validate_frame(read_table(tmp_path / "release" / "synthetic.csv", demo_schema), demo_schema).ok
    for index in (3, 4):  # never took part: no ledger, nothing spent
        assert not SitePolicy.load(plan.policies[index]).ledger.exists()
    assert "SSL" in logs[4].read_text() or "certificate" in logs[4].read_text().lower()


def test_site_daemon_refuses_to_start_with_data_that_does_not_fit(demo_frame, tmp_path):
    plan = prepare_sites([demo_frame.head(50).assign(age=300)], demo_schema_path(), tmp_path, 1.0, 1e-5)
    create_site_keypair(plan.policies[0].parent)
    _connect(plan.policies[0], "127.0.0.1:1", tmp_path / "ca.crt", 0)
    with pytest.raises(DataValidationError, match="age"):
        supernode_command(plan.policies[0])

"""The operator's second day at a site: deleting the ledger together with its audit trail is no
silent way back to epsilon 0 while anything beside them shows the site has spent privacy, and a
ledger the site cannot write is named with the reason (on the site's own terminal only)."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedsyn.cli.main import app
from fedsyn.client.policy import SitePolicy
from fedsyn.client.site import Site, initialise_ledger, spending_traces
from fedsyn.data.demo import demo_schema_path
from fedsyn.federation.protocol import schema_fingerprint
from fedsyn.privacy.accounting import LedgerError, PrivacyLedger
from fedsyn.simulations.run import prepare_sites

runner = CliRunner()


def _init(policy: Path, *options: str):
    return runner.invoke(app, ["client", "ledger", "init", "--config", str(policy), *options])


@pytest.fixture()
def spent_site(tmp_path, demo_frame) -> Path:
    """A site that answered round 0 of one run (charged, reply stored), then lost its ledger and trail."""
    plan = prepare_sites([demo_frame.head(300)], demo_schema_path(), tmp_path / "sites", 5.0, 1e-5)
    policy = SitePolicy.load(plan.policies[0])
    site = Site(policy)
    site.release_marginals(8.0, 1.0, schema_fingerprint(site.schema), run_id="3f2a9c")
    assert site.ledger.epsilon() > 0
    policy.ledger.unlink()
    policy.audit_trail.unlink()
    return plan.policies[0]


def test_a_deleted_ledger_and_trail_do_not_restart_at_zero_while_stored_replies_remain(spent_site):
    policy = SitePolicy.load(spent_site)
    result = _init(spent_site)
    assert result.exit_code != 0 and not policy.ledger.exists()
    squeezed = "".join(result.output.split())  # the console wraps long paths anywhere
    assert "hasspentprivacybefore" in squeezed and "1storedreplyof1run(s)" in squeezed
    assert "ledger-replies" in squeezed and "--reset-reason" in squeezed
    result = _init(spent_site, "--reset-reason", "extract replaced by other patients")
    assert result.exit_code == 0 and PrivacyLedger.load(policy.ledger).events == []
    reset = json.loads(policy.audit_trail.read_text().splitlines()[-1])
    assert reset["event"] == "ledger_reset" and "stored reply" in reset["traces"][0]


@pytest.mark.parametrize("trace", ["replies", "replaced", "lock"])
def test_each_trace_of_spending_alone_refuses_a_silent_restart(tmp_path, demo_frame, trace):
    plan = prepare_sites([demo_frame.head(300)], demo_schema_path(), tmp_path / "sites", 5.0, 1e-5)
    policy = SitePolicy.load(plan.policies[0])
    policy.ledger.unlink()
    policy.audit_trail.unlink()
    if trace == "replies":
        (policy.ledger.parent / "ledger-replies").mkdir()
        (policy.ledger.parent / "ledger-replies" / "run-round-00002.npz").write_bytes(b"")
    elif trace == "replaced":
        (policy.ledger.parent / "ledger.json.replaced").write_text("{}")
    else:
        (policy.ledger.parent / "ledger.json.lock").write_text("")
    assert len(spending_traces(policy.ledger)) == 1
    with pytest.raises(LedgerError, match="has spent privacy before"):
        initialise_ledger(policy)
    assert not policy.ledger.exists()


def test_a_second_reset_keeps_the_first_replaced_ledger(tmp_path, demo_frame):
    plan = prepare_sites([demo_frame.head(300)], demo_schema_path(), tmp_path / "sites", 5.0, 1e-5)
    policy = SitePolicy.load(plan.policies[0])
    initialise_ledger(policy, reset_reason="first refresh")
    initialise_ledger(policy, reset_reason="second refresh")
    assert len(list(policy.ledger.parent.glob("ledger.json.replaced*"))) == 2


def test_an_unwritable_ledger_folder_is_named_with_the_reason(tmp_path, demo_frame, monkeypatch):
    """Running as root ignores file modes, so the operating system's refusal is simulated where
    the ledger is written."""
    plan = prepare_sites([demo_frame.head(300)], demo_schema_path(), tmp_path / "sites", 5.0, 1e-5)
    policy = SitePolicy.load(plan.policies[0])
    policy.ledger.unlink()
    policy.audit_trail.unlink()

    def refused(path: Path, _write) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr("fedsyn.privacy.accounting.write_atomically", refused)
    result = _init(plan.policies[0])
    squeezed = "".join(result.output.split())  # the console wraps long paths anywhere
    assert result.exit_code != 0 and "withheld" not in squeezed
    assert f"cannotwrite{policy.ledger}:Permissiondenied" in squeezed


def test_a_moved_extract_takes_its_ledger_and_everything_spent_with_it(tmp_path, demo_frame):
    """helper-108 M5: a policy whose `data` was pointed at the extract's new place was refused
    ('each extract keeps its own ledger'), and the only way on the docs gave was a new ledger at
    epsilon 0 for the same patients. `ledger move` carries the ledger, audited."""
    plan = prepare_sites([demo_frame.head(300)], demo_schema_path(), tmp_path / "sites", 5.0, 1e-5)
    site = Site(SitePolicy.load(plan.policies[0]))
    site.release_marginals(8.0, 1.0, schema_fingerprint(site.schema), run_id="3f2a9c")
    spent = site.ledger.epsilon()
    moved = tmp_path / "new-storage" / "extract.parquet"
    moved.parent.mkdir()
    raw = json.loads(plan.policies[0].read_text())
    plan.policies[0].write_text(json.dumps({**raw, "data": str(moved)}))
    with pytest.raises(LedgerError, match="ledger move"):
        Site(SitePolicy.load(plan.policies[0]))
    refused = runner.invoke(app, ["client", "ledger", "move", "--config", str(plan.policies[0])])
    assert refused.exit_code == 2 and "move the extract first" in refused.output
    site.policy.data.rename(moved)
    result = runner.invoke(app, ["client", "ledger", "move", "--config", str(plan.policies[0])])
    assert result.exit_code == 0, result.output
    assert Site(SitePolicy.load(plan.policies[0])).ledger.epsilon() == spent
    [entry] = [json.loads(line) for line in site.policy.audit_trail.read_text().splitlines()
               if json.loads(line)["event"] == "ledger_moved"]
    assert entry["protects"] == str(moved.resolve()) and entry["protected"] != entry["protects"]

"""The coordinator's live view over a real audit log and release (one small in-process run)."""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from flwr.app import Context, RecordDict

from fedsyn.client.app import make_client_app
from fedsyn.client.policy import SitePolicy
from fedsyn.data.demo import demo_schema_path
from fedsyn.federation import protocol
from fedsyn.privacy.accounting import PrivacyLedger
from fedsyn.server.app import ReleasePlan, run_federation
from fedsyn.server.ops.dashboard import create_app, needs_token
from fedsyn.server.ops.dashboard_state import (
    latest_run,
    round_views,
    run_summary,
    site_views,
)
from fedsyn.server.record import FederationError, known_names
from fedsyn.simulations.inprocess import InProcessGrid
from fedsyn.simulations.run import prepare_sites
from fedsyn.simulations.split import split_table
from fedsyn.trust.audit import read_entries
from fedsyn.trust.signing import generate_keypair
from tests.helpers import SETTINGS

STOPPED = 1002  # the second simulated site misses round 2
PORT = 8050


def _without_site_in_round_two(grid: InProcessGrid, stopped: int) -> None:
    """The stopped site never receives round 2's message (as if its SuperNode were down)."""
    answer = grid.push_messages

    def in_round_two(message) -> bool:
        config = message.content.config_records.get(protocol.CONFIG, {})
        return message.metadata.message_type == "train" and config.get("round") == 2

    grid.push_messages = lambda messages: answer(
        [m for m in messages if not (m.metadata.dst_node_id == stopped and in_round_two(m))])


def _superlink_database(path: Path, online: list[int], offline: list[int]) -> Path:
    """The columns of Flower 1.41's ``node`` table that the view reads (the real table has more)."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE node (node_id BIGINT, status VARCHAR, registered_at VARCHAR, "
                   "last_activated_at VARCHAR, online_until FLOAT, public_key BLOB)")
        for node in online:
            db.execute("INSERT INTO node VALUES (?, 'online', '2026-01-01', '2026-01-01', ?, x'00')",
                       (node, time.time() + 3600))
        for node in offline:
            db.execute("INSERT INTO node VALUES (?, 'offline', '2026-01-01', NULL, NULL, x'01')", (node,))
    return path


@pytest.fixture(scope="module")
def coordinator_files(demo_frame, demo_schema, tmp_path_factory) -> dict[str, Path]:
    """Audit log, signed release, public key and a SuperLink node table from one run with a drop-out."""
    root = tmp_path_factory.mktemp("dashboard")
    tables = split_table(demo_frame.sample(900, random_state=0), 3, np.random.default_rng(0))
    plan = prepare_sites(tables, demo_schema_path(), root / "sites", epsilon=1.0, delta=1e-5)
    private, public = generate_keypair(root / "keys")
    grid = InProcessGrid(make_client_app(plan.site_policy), len(plan.policies))
    _without_site_in_round_two(grid, STOPPED)
    release = ReleasePlan(root / "release", rows=200, signing_key=private, audit_log=root / "audit.jsonl")
    run_federation(grid, demo_schema, SETTINGS, release)
    database = _superlink_database(root / "superlink.db", online=[1001, 1003], offline=[STOPPED])
    return {"audit_log": root / "audit.jsonl", "release_dir": root / "release", "public_key": public,
            "database": database}


def _client(app) -> TestClient:
    """A browser on the coordinator's machine: it sends ``Host: 127.0.0.1:PORT``."""
    return TestClient(app, base_url=f"http://127.0.0.1:{PORT}")


def _state(files: dict[str, Path], **overrides) -> dict:
    arguments = {**files, "token": None, **overrides}
    response = _client(create_app(**arguments)).get("/api/state")
    assert response.status_code == 200
    return response.json()


def test_state_reports_sites_rounds_the_dropped_site_epsilon_and_a_sound_chain(coordinator_files):
    state = _state(coordinator_files)
    assert state["audit"]["ok"] is True and state["audit"]["signed_head_checked"] is True
    sites = {int(s["node_id"]): s for s in state["sites"]}
    assert sorted(sites) == [1001, 1002, 1003]
    assert sites[STOPPED]["rounds_accepted"] == [0, 1, 3]
    assert [d["round"] for d in sites[STOPPED]["dropped"]] == [2]
    assert "no reply" in sites[STOPPED]["dropped"][0]["reason"]
    assert sites[1001]["rounds_accepted"] == [0, 1, 2, 3] and sites[1001]["last_seen"]
    assert all(0 < s["epsilon_claimed"] <= 1.0 for s in sites.values())
    rounds = {r["round"]: r for r in state["rounds"]}
    assert [(rounds[n]["accepted"], rounds[n]["dropped"]) for n in (0, 1, 2, 3)] == [(3, 0), (3, 0), (2, 1), (3, 0)]
    assert all(rounds[n]["finished"] for n in (1, 2, 3)) and state["run"]["finished"]
    release = state["release"]
    assert release["signed"] and release["signature"] == "verified" and release["rows"] == 200
    assert 0 <= release["mean_total_variation"] <= 1
    released = {int(s["node_id"]): s for s in release["sites"]}
    assert released[STOPPED]["dropped"] == 1
    for node, site in sites.items():  # the live claim and the release's ledger agree at the end of the run
        assert released[node]["epsilon_cumulative"] == pytest.approx(site["epsilon_claimed"], rel=1e-6)
    registry = {int(n["node_id"]): n for n in state["registry"]["nodes"]}
    assert registry[1001]["online"] and not registry[STOPPED]["online"]


def test_a_tampered_audit_log_shows_broken(coordinator_files, tmp_path):
    log = tmp_path / "audit.jsonl"
    lines = coordinator_files["audit_log"].read_text().splitlines()
    entry = json.loads(lines[3])
    entry["epsilon_claimed"] = 0.001  # someone makes a site look cheaper
    lines[3] = json.dumps(entry, sort_keys=True)
    log.write_text("\n".join(lines) + "\n")
    state = _state({**coordinator_files, "audit_log": log, "public_key": None})
    assert state["audit"]["ok"] is False and "altered" in state["audit"]["message"]
    no_database = _state({**coordinator_files, "database": None})
    assert no_database["registry"]["available"] is False


def test_token_is_required_when_configured(coordinator_files):
    client = _client(create_app(**coordinator_files, token="s3cret"))
    assert client.get("/api/state").status_code == 401
    assert client.get("/").status_code == 401
    assert client.get("/api/state", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/state", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    page = client.get("/?token=s3cret")
    assert page.status_code == 200 and "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert client.post("/api/state?token=s3cret").status_code == 405  # read-only
    assert needs_token("0.0.0.0") and not needs_token("127.0.0.1")


def test_only_requests_addressed_to_the_view_are_answered(coordinator_files):
    """DNS rebinding: a page on evil.example that rebinds its name to 127.0.0.1 sends ``Host: evil.example``."""
    loopback = _client(create_app(**coordinator_files, token=None))
    for host in ("evil.example", f"evil.example:{PORT}", "127.0.0.1.evil.example", "localhost.", "[::2]:8050", ""):
        refused = loopback.get("/api/state", headers={"Host": host})
        assert refused.status_code == 400, host
        assert refused.headers["x-frame-options"] == "DENY"
    assert loopback.get("/", headers={"Host": "evil.example"}).status_code == 400
    for host in (f"127.0.0.1:{PORT}", "127.0.0.1", "localhost", f"LocalHost:{PORT}", f"[::1]:{PORT}"):
        assert loopback.get("/api/state", headers={"Host": host}).status_code == 200, host
    # Bound beyond loopback: its own address and the names the operator adds; still the token.
    wide = _client(create_app(**coordinator_files, token="s3cret", host="10.1.2.3",
                              extra_hosts=["coordinator.hospital.example"]))
    bearer = {"Authorization": "Bearer s3cret"}
    for host in ("10.1.2.3:8050", "coordinator.hospital.example"):
        assert wide.get("/api/state", headers={"Host": host, **bearer}).status_code == 200, host
    for host in ("localhost", "127.0.0.1", "evil.example"):
        assert wide.get("/api/state", headers={"Host": host, **bearer}).status_code == 400, host
    assert wide.get("/api/state", headers={"Host": "10.1.2.3"}).status_code == 401
    every = _client(create_app(**coordinator_files, token="s3cret", host="::"))
    assert every.get("/api/state", headers={"Host": f"[::1]:{PORT}", **bearer}).status_code == 200
    assert every.get("/api/state", headers={"Host": "evil.example", **bearer}).status_code == 400


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_page_shows_the_live_data_in_headless_chromium(coordinator_files):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (.ci/run installs it)")
    import uvicorn
    from playwright.sync_api import sync_playwright

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(**coordinator_files, token="s3cret", host="127.0.0.1"),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    errors: list[str] = []
    try:
        while not server.started:
            time.sleep(0.05)
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            tab = browser.new_page(viewport={"width": 1280, "height": 900})
            tab.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            tab.on("pageerror", lambda error: errors.append(str(error)))
            tab.goto(f"http://127.0.0.1:{port}/?token=s3cret")
            tab.wait_for_selector("#sites table")
            dropped = tab.inner_text("#sites")
            audit = tab.inner_text("#audit")
            bars = tab.eval_on_selector_all("#epsilon rect", "bars => bars.length")
            tab.screenshot(path="/tmp/dashboard.png", full_page=True)
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert errors == []
    assert "round 2: no reply" in dropped and audit == "OK"
    assert bars == 6  # three sites: the live claim and the release's figure each


# -- the operator's second day: a refused site, a site that keeps dropping out, a failed run --------

BIG = 2234876404430693805  # a real Flower node id: above 2**53, so a JavaScript number rounds it (…694000)
LONG_NAME = "St Elsewhere University Teaching Hospital, Paediatric ICU"  # sites' names stop at 64
NAMES = [LONG_NAME, "hospital-b", "hospital-c", "hospital-d", "hospital-e"]
REFUSING, DROPPING, FAILING = BIG + 1, BIG + 2, BIG + 4


def _grid_with_big_ids(plan, down: dict[int, set[int]]) -> InProcessGrid:
    """Five sites with 64-bit node ids; ``down[node]`` are the training rounds that node misses."""
    grid = InProcessGrid(make_client_app(plan.site_policy), len(plan.policies))
    grid.contexts = {BIG + i: Context(run_id=1, node_id=BIG + i, state=RecordDict(), run_config={},
                                      node_config={"partition-id": i, "num-partitions": len(plan.policies)})
                     for i in range(len(plan.policies))}
    answer = grid.push_messages

    def missed(message) -> bool:
        config = message.content.config_records.get(protocol.CONFIG, {})
        return message.metadata.message_type == "train" and \
            config.get("round") in down.get(message.metadata.dst_node_id, set())

    grid.push_messages = lambda messages: answer([m for m in messages if not missed(m)])
    return grid


@pytest.fixture(scope="module")
def second_day(demo_frame, demo_schema, tmp_path_factory) -> dict[str, Path]:
    """Day one: five sites join a short run and name themselves; its release is signed.
    Day two: hospital-b now allows no more than it has spent and is left out at round 0; hospital-c is
    down from round 2 on; in round 4 hospital-e is down too, which leaves too few sites, so the
    run fails after its interim releases (``--every 1``), which lie beside day one's release and
    leave it in place."""
    root = tmp_path_factory.mktemp("second-day")
    tables = split_table(demo_frame.sample(1500, random_state=1), 5, np.random.default_rng(1))
    plan = prepare_sites(tables, demo_schema_path(), root / "sites", epsilon=3.0, delta=1e-5, names=NAMES)
    private, public = generate_keypair(root / "keys")
    out, log = root / "releases" / "latest", root / "audit.jsonl"
    run_federation(_grid_with_big_ids(plan, {}), demo_schema, SETTINGS.model_copy(update={"rounds": 1, "epsilon": 0.5}),
                   ReleasePlan(out, rows=200, signing_key=private, audit_log=log))
    refusing = plan.policies[1]  # it allows no more than it has spent
    spent = PrivacyLedger.load(SitePolicy.load(refusing).ledger).epsilon()
    refusing.write_text(json.dumps({**json.loads(refusing.read_text()), "max_epsilon": spent}))
    with pytest.raises(FederationError, match="round 4"):
        run_federation(_grid_with_big_ids(plan, {DROPPING: {2, 3, 4}, FAILING: {4}}), demo_schema,
                       SETTINGS.model_copy(update={"rounds": 4, "epsilon": 2.0, "min_sites": 3}),
                       ReleasePlan(out, rows=200, every=1, signing_key=private, audit_log=log))
    database = _superlink_database(root / "superlink.db", online=[BIG, BIG + 3], offline=[DROPPING, FAILING])
    return {"audit_log": log, "release_dir": out, "public_key": public, "database": database}


def test_node_ids_are_served_as_text_so_no_digit_is_lost(second_day):
    state = _state(second_day)
    ids = [s["node_id"] for s in state["sites"]]
    assert all(isinstance(i, str) for i in ids) and str(BIG) in ids and str(DROPPING) in ids
    assert {n["node_id"] for n in state["registry"]["nodes"]} >= {str(BIG), str(DROPPING)}
    assert all(isinstance(s["node_id"], str) for s in state["release"]["sites"])


def test_a_refused_site_is_named_from_its_earlier_entries_not_node_id(second_day):
    sites = {s["node_id"]: s for s in _state(second_day)["sites"]}
    refused = sites[str(REFUSING)]
    assert refused["refused"] and refused["name"] == "hospital-b"
    assert not any(s["name"].startswith("node-") for s in sites.values())
    # Without earlier runs, the refusal's own words name it ("site 'hospital-b' has spent ...").
    entries = latest_run(read_entries(second_day["audit_log"]))
    assert {s["node_id"]: s["name"] for s in site_views(entries, known_names(entries))}[str(REFUSING)] == \
        "hospital-b"


def test_a_reason_repeated_over_rounds_is_one_line_with_its_rounds(second_day):
    dropping = {s["node_id"]: s for s in _state(second_day)["sites"]}[str(DROPPING)]
    rounds = [d["round"] for d in dropping["dropped"]]
    assert rounds == [2, 3]  # down from round 2; the failing round 4 did not ask it again
    [line] = dropping["dropped_reasons"]
    assert line["rounds"] == rounds and line["count"] == 2 and line["rounds_text"] == "2\u20133"
    assert "no reply" in line["reason"]


def test_after_a_failed_run_the_latest_good_release_is_shown(second_day):
    out = second_day["release_dir"]
    # The failed run's interim releases lie beside day one's release, which stays in place (helper-100 M-3).
    assert (out / "privacy_report.json").exists()
    assert [p.name for p in sorted(out.parent.glob("latest.round-*"))] == [f"latest.round-00{r}" for r in (1, 2, 3)]
    assert not [p for p in out.parent.iterdir() if p.name.startswith("latest.replaced-")]
    release = _state(second_day)["release"]
    assert release is not None and release["path"] == str(out) and release["signature"] == "verified"
    assert release["note"].startswith("the newest run has written no release") and release["run"]
    assert {s["site"] for s in release["sites"]} == set(NAMES)


def _serve(files: dict[str, Path]):
    """The view on a free loopback port, in a thread; returns (server, thread, port)."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(**files, token="s3cret", host="127.0.0.1"),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server, thread, port


# Every label of the epsilon chart: its full name (tooltip), whether its box lies inside the chart's.
LABELS = """svg => [...svg.querySelectorAll('text.label')].map(t => {
  const box = t.getBoundingClientRect(), chart = svg.getBoundingClientRect();
  return {title: t.parentNode.querySelector('title').textContent, text: t.textContent,
          inside: box.left >= chart.left - 0.5 && box.right <= chart.right + 0.5};
})"""


def test_second_day_page_in_headless_chromium(second_day):
    """One site refused, one dropping out for three rounds, a failed run: ids whole, names, one
    line per reason, labels inside the chart, and day one's release."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    server, thread, port = _serve(second_day)
    errors: list[str] = []
    try:
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            tab = browser.new_page(viewport={"width": 1280, "height": 900})
            tab.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            tab.on("pageerror", lambda error: errors.append(str(error)))
            tab.goto(f"http://127.0.0.1:{port}/?token=s3cret")
            tab.wait_for_selector("#sites table")
            tab.wait_for_selector("#release table")
            sites, release = tab.inner_text("#sites"), tab.inner_text("#release")
            dropping = tab.inner_text(f"#sites tr:has-text('{DROPPING}')")
            labels = tab.eval_on_selector("#epsilon svg", LABELS)
            tab.screenshot(path="/tmp/dashboard-second-day.png", full_page=True)
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert errors == []
    assert str(BIG) in sites and str(DROPPING) in sites and "2234876404430694000" not in sites
    assert "hospital-b" in sites and f"node-{REFUSING}" not in sites
    assert dropping.count("no reply") == 1 and "rounds 2\u20133 (2\u00d7): no reply" in dropping
    assert {label["title"].split(" (node")[0] for label in labels} == set(NAMES)
    assert all(label["inside"] for label in labels), labels
    long = next(label for label in labels if label["title"].startswith(LONG_NAME))
    assert long["text"].endswith("\u2026") and len(long["text"]) < len(LONG_NAME)
    assert "earlier release" in release and "verified" in release


def test_a_budget_plan_written_after_a_run_is_not_shown_as_part_of_it():
    """``fedsyn server plan`` writes its site_budget and site_refused entries under its own run id
    and no run_configured: the view of the newest run leaves them out (it showed a clean run's
    round-0 refusals that were the plan's)."""
    entries = [{"event": "run_configured", "run": "a"}, {"event": "round_finished", "run": "a", "round": 1},
               {"event": "site_budget", "run": "plan", "site": "h1"},
               {"event": "site_refused", "run": "plan", "round": 0, "site": "h2", "reason": "spent"},
               {"event": "release_written", "run": "a"}]
    assert [entry["event"] for entry in latest_run(entries)] == ["run_configured", "round_finished",
                                                                 "release_written"]


def test_finished_and_late_sites_and_an_early_stop_are_shown_as_such():
    """A site whose planned rounds are done, a node that connected after the budget query and
    training that stopped early: the sites carry a note, no phantom round appears for the
    round the late node missed, and the run says where training stopped."""
    entries = [{"event": "run_configured", "run": "a", "settings": {"rounds": 3}},
               {"event": "round_started", "round": 1, "sites": 2},
               {"event": "update_accepted", "round": 1, "node": 1, "site": "h1"},
               {"event": "round_finished", "round": 1, "accepted": 1, "dropped": 0},
               {"event": "site_finished", "node": 1, "site": "h1", "rounds_planned": 1},
               {"event": "site_joined_late", "round": 2, "node": 9},
               {"event": "training_stopped", "round": 1, "rounds": 3, "sites_ready": 0}]
    notes = {s["name"]: s["notes"] for s in site_views(entries)}
    assert notes["h1"] == ["its budget fit 1 training round(s): asked no more"]
    assert notes["node-9"] == ["connected after the budget query: not part of this run"]
    assert [r["round"] for r in round_views(entries)] == [1]
    assert run_summary(entries)["stopped_after"] == 1


def test_an_invalid_pair_tables_reply_is_quarantined_and_its_site_joined_round_zero():
    """Round 0's second release names its stage in the reason; a rejected one is still shown
    quarantined, and the site is not counted dropped from round 0 (it joined with its first)."""
    entries = [{"event": "site_joined", "round": 0, "node": 7, "site": "a"},
               {"event": "update_rejected", "round": 0, "node": 7, "site": "a", "stage": "pair tables",
                "reason": "pair tables: invalid reply: 'pair:x|y' has shape (2, 2), expected (3, 2)"}]
    round_zero = round_views(entries)[0]
    assert (round_zero["accepted"], round_zero["dropped"]) == (1, 0) and len(round_zero["quarantined"]) == 1
    assert [d["quarantined"] for d in site_views(entries)[0]["dropped"]] == [True]


def test_a_sites_claim_after_its_pair_tables_is_the_one_shown():
    """helper-116: a site killed in round 1 showed its round-0 claim (0.6224) while its last one,
    sent with its pair tables, was 0.6501: the live view understated what it had spent."""
    entries = [{"event": "site_budget", "node": 7, "site": "a", "epsilon_spent": 0.0, "max_epsilon": 1.0},
               {"event": "site_joined", "round": 0, "node": 7, "site": "a", "epsilon_claimed": 0.6224},
               {"event": "pair_tables_accepted", "round": 0, "node": 7, "site": "a", "epsilon_claimed": 0.6501}]
    (site,) = site_views(entries)
    assert site["epsilon_claimed"] == 0.6501 and site["rounds_accepted"] == [0]

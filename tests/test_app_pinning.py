"""The hospital's check of the coordinator's App bundle, on bundles Flower itself builds."""

import inspect
import json
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
import tomli_w
from flwr.cli.build import build_fab_from_disk, build_fab_from_files

from fedsyn.client.ops.clientapp_process import RunNames, checked_install
from fedsyn.client.ops.trusted_app import UntrustedAppError, check_app_bundle
from fedsyn.client.policy import SitePolicy
from fedsyn.federation.app_bundle import bundle_hash
from fedsyn.server.ops.superlink import APP_DIR, app_bundle_hash

FEDSYN_APP = (APP_DIR / "pyproject.toml").read_bytes()


def _bundle(pyproject: dict | None = None, **files: bytes) -> bytes:
    text = FEDSYN_APP if pyproject is None else tomli_w.dumps(pyproject).encode()
    return build_fab_from_files({"pyproject.toml": text, **files})[0]


def _fedsyn_project() -> dict:
    return tomllib.loads(FEDSYN_APP.decode())


def test_the_app_fedsyn_submits_passes_and_its_published_hash_is_what_sites_receive():
    shipped = build_fab_from_disk(APP_DIR)
    assert check_app_bundle(shipped) == app_bundle_hash() == bundle_hash(shipped)
    assert check_app_bundle(shipped, frozenset({app_bundle_hash()})) == app_bundle_hash()


def test_a_bundle_carrying_code_is_refused_even_with_the_fedsyn_component():
    shadow = _bundle(**{"fedsyn/client/deploy.py": b"app = None  # would shadow the installed guard\n"})
    with pytest.raises(UntrustedAppError, match="fedsyn/client/deploy.py"):
        check_app_bundle(shadow)


def test_a_bundle_naming_another_clientapp_is_refused():
    project = _fedsyn_project()
    project["tool"]["flwr"]["app"]["components"]["clientapp"] = "fedsyn.simulations.run:app"
    with pytest.raises(UntrustedAppError, match="names ClientApp 'fedsyn.simulations.run:app'"):
        check_app_bundle(_bundle(project))


def test_a_bundle_asking_for_dependencies_is_refused():
    project = _fedsyn_project()
    project["project"]["dependencies"] = ["fedsyn-patched==9.9"]
    with pytest.raises(UntrustedAppError, match="fedsyn-patched"):
        check_app_bundle(_bundle(project))


def test_only_approved_hashes_run_when_the_site_lists_some():
    project = _fedsyn_project()
    project["tool"]["flwr"]["app"]["config"]["rounds"] = 10_000  # code-free, but not what the site approved
    with pytest.raises(UntrustedAppError, match="not in this site's approved_apps"):
        check_app_bundle(_bundle(project), frozenset({app_bundle_hash()}))


def test_unreadable_bundles_are_refused():
    with pytest.raises(UntrustedAppError, match="not a readable Flower App"):
        check_app_bundle(b"PK\x03\x04 not really a zip")


def test_a_refused_bundle_is_never_installed_and_the_site_trail_records_it(tmp_path):
    policy = SitePolicy(site_id="st-mary", data=tmp_path / "d.csv", schema=tmp_path / "s.json",
                        ledger=tmp_path / "ledger.json", max_epsilon=1.0, delta=1e-5)
    installed: list[bytes] = []

    def flower_install(content: bytes, **_: object) -> Path:
        installed.append(content)
        return tmp_path / "app"

    run = RunNames()
    run.names = ("fedsyn/fedsyn-federation", _fedsyn_project()["project"]["version"])
    install = checked_install(policy, flower_install, run)
    with pytest.raises(UntrustedAppError):
        install(_bundle(**{"evil.py": b"import os\n"}), skip_prompt=True)
    assert installed == []
    refusal = json.loads(policy.audit_trail.read_text().splitlines()[-1])
    assert refusal["event"] == "app-refused" and "evil.py" in refusal["reason"]
    shipped = build_fab_from_disk(APP_DIR)
    assert install(shipped, skip_prompt=True) == tmp_path / "app" and installed == [shipped]


def test_a_run_naming_another_app_than_its_bundle_is_refused_before_install(tmp_path):
    """helper-118 M1: Flower loads the ClientApp from the folder the run's fab_id and fab_version
    name, the coordinator's word, not from the bundle it checked: a run naming
    '1.0.0.<hash>/../../elsewhere/someapp' loaded another App on the site's machine, unguarded."""
    policy = SitePolicy(site_id="st-mary", data=tmp_path / "d.csv", schema=tmp_path / "s.json",
                        ledger=tmp_path / "ledger.json", max_epsilon=1.0, delta=1e-5)
    installed: list[bytes] = []
    run = RunNames()
    install = checked_install(policy, lambda content, **_: installed.append(content) or tmp_path / "app", run)
    shipped = build_fab_from_disk(APP_DIR)
    project = _fedsyn_project()
    own = (f"{project['tool']['flwr']['app']['publisher']}/{project['project']['name']}", project["project"]["version"])
    elsewhere = f"{own[1]}.{bundle_hash(shipped)[:8]}/../../elsewhere/someapp"
    for names in (None, (own[0], elsewhere), ("other/app", own[1])):
        run.names = names
        with pytest.raises(UntrustedAppError):
            install(shipped, skip_prompt=True)
    assert installed == [] and "app-refused" in policy.audit_trail.read_text()
    run.names = own
    assert install(shipped, skip_prompt=True) == tmp_path / "app" and installed == [shipped]


@pytest.mark.parametrize("field", ["version", "publisher"])  # Flower itself refuses such a [project] name
def test_a_bundle_whose_names_would_leave_the_flower_home_is_refused(field):
    """helper-118: a '..' in the bundle's version made Flower install it outside its home."""
    project = _fedsyn_project()
    if field == "publisher":
        project["tool"]["flwr"]["app"]["publisher"] = "../../outside"
    else:
        project["project"]["version"] = "0.1.0/../../outside"
    with pytest.raises(UntrustedAppError, match="plain names"):
        check_app_bundle(_bundle(project))


def test_the_sites_clientapp_process_wires_both_checks_and_never_installs_dependencies(tmp_path, monkeypatch):
    """The launcher's process wraps Flower's pull (the run's App names) and install (the bundle),
    and drops the SuperNode's switch for Flower's runtime dependency install (helper-118 L2)."""
    import sys

    from flwr.supernode.runtime import run_clientapp as flower_runtime

    from fedsyn.client.ops import clientapp_process

    seen: list[list[str]] = []
    monkeypatch.setattr(clientapp_process, "flwr_clientapp", lambda: seen.append(list(sys.argv)))
    monkeypatch.setattr(clientapp_process, "configure_child", lambda: None)
    monkeypatch.setenv(clientapp_process.POLICY_VARIABLE, str(tmp_path / "site.json"))
    monkeypatch.setattr(sys, "argv", ["flwr-clientapp", "--allow-runtime-dependency-installation", "--insecure"])
    policy = SitePolicy(site_id="st-mary", data=tmp_path / "d.csv", schema=tmp_path / "s.json",
                        ledger=tmp_path / "ledger.json", max_epsilon=1.0, delta=1e-5)
    policy.save(tmp_path / "site.json")
    shipped = build_fab_from_disk(APP_DIR)
    installed: list[bytes] = []
    monkeypatch.setattr(flower_runtime, "pull_task_input", lambda client: (
        None, None, SimpleNamespace(fab_id="other/app", fab_version="1.0.0"), SimpleNamespace(content=shipped)))
    monkeypatch.setattr(flower_runtime, "install_from_fab",
                        lambda content, **_: installed.append(content) or tmp_path / "app")
    clientapp_process.main()
    assert seen == [["flwr-clientapp", "--insecure"]]
    _, _, run, fab = flower_runtime.pull_task_input(None)  # the run names another App than its bundle
    with pytest.raises(UntrustedAppError, match="the run names App 'other/app'"):
        flower_runtime.install_from_fab(fab.content, skip_prompt=True)
    assert installed == []


def test_a_policy_broken_while_the_site_runs_is_answered_at_once_with_an_error(tmp_path, caplog):
    """helper-98 M1: a stray comma in a running site's policy crashed every ClientApp with a
    traceback before Flower could answer, and the coordinator waited its whole round timeout."""
    from fedsyn.client.ops.clientapp_process import guarded_install
    from fedsyn.client.policy import PolicyError

    (tmp_path / "site.json").write_text('{"site_id": "st-mary",, }')
    installed: list[bytes] = []
    install = guarded_install(str(tmp_path / "site.json"), lambda content, **_: installed.append(content), RunNames())
    with pytest.raises(PolicyError, match="its operator sees why in the site's log") as refused:
        install(build_fab_from_disk(APP_DIR), skip_prompt=True)
    assert installed == [] and "site.json" not in str(refused.value)
    assert "cannot be parsed" in caplog.text and "until the file is fixed" in caplog.text


def test_site_policies_only_take_full_sha256_hashes(tmp_path):
    with pytest.raises(ValueError, match="approved_apps"):
        SitePolicy(site_id="x", data=tmp_path / "d.csv", schema=tmp_path / "s.json", ledger=tmp_path / "l.json",
                   max_epsilon=1.0, delta=1e-5, approved_apps=["2636ddae"])


def test_the_coordinator_keeps_a_sites_app_refusal_as_flower_words_it_and_no_other_exception_text():
    """A site's refusal of the App bundle reaches the coordinator as Flower words an exception
    ('<class ...>:<'text'>'), and its text names the bundle only: the coordinator keeps it, so the
    operator is told why. Any other exception text Flower sends for a site is replaced."""
    from fedsyn.federation import protocol

    refusal = f"{UntrustedAppError}:<'App bundle 0123 is not in this site's approved_apps'>"
    assert protocol.APP_REFUSED_PREFIX == f"{UntrustedAppError}:"
    assert protocol.kept_reason(1, refusal) == refusal
    assert "secret" not in protocol.kept_reason(1, "<class 'OSError'>:<'[Errno 30] /secret/audit.jsonl'>")


def test_no_process_fedsyn_starts_for_flower_sends_flowers_telemetry(tmp_path, monkeypatch):
    """helper-88's F4: Flower posts usage events to telemetry.flower.ai (a machine id, the OS,
    each ClientApp run's start and exit code) unless FLWR_TELEMETRY_ENABLED=0. Every process
    fedsyn starts for Flower, the deploy files and the fedsyn command itself turn it off."""
    import subprocess
    import sys

    from fedsyn.client.ops.clientapp_process import install_launcher
    from fedsyn.client.ops.launch import supernode_launch
    from fedsyn.server.ops.superlink import CoordinatorConfig

    (tmp_path / "server.toml").write_text('[run]\nschema = "schema.json"\n')
    coordinator = CoordinatorConfig.load(tmp_path / "server.toml")
    for environment in (coordinator.superlink_environment(), coordinator.flwr_environment()):
        assert environment["FLWR_TELEMETRY_ENABLED"] == "0"
    launcher = (install_launcher(tmp_path / "bin", tmp_path / "policy.json") / "flwr-clientapp").read_text()
    assert "FLWR_TELEMETRY_ENABLED=0 " in launcher.splitlines()[1]
    assert "NO_TELEMETRY" in inspect.getsource(supernode_launch)
    root = Path(__file__).resolve().parents[1] / "deploy"
    for name in ("systemd/fedsyn-client.service", "systemd/fedsyn-server.service", "Dockerfile.client",
                 "Dockerfile.server", "compose.yaml"):
        assert "FLWR_TELEMETRY_ENABLED" in (root / name).read_text(), name
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "1")
    shown = subprocess.run([sys.executable, "-c", "import os, sys; sys.argv = ['fedsyn', '--version']\n"
                            "from fedsyn.cli.main import main\ntry:\n    main()\nexcept SystemExit:\n"
                            "    print(os.environ['FLWR_TELEMETRY_ENABLED'])"],
                           capture_output=True, text=True, check=True)
    assert shown.stdout.strip().endswith("0")


def test_a_bundle_of_another_shape_is_refused_as_untrusted_in_bounded_words():
    """helper-88's F5: a pyproject.toml with ``tool = "x"`` raised AttributeError in the check:
    still never installed, but Flower sent the coordinator that exception's text, and the
    site's trail held no ``app-refused`` line. Its names are quoted bounded."""
    import io
    import zipfile

    odd = io.BytesIO()  # Flower's own builder refuses to build it; a hostile coordinator need not use it
    with zipfile.ZipFile(odd, "w") as bundle:
        bundle.writestr("pyproject.toml", 'tool = "x"\n')
    with pytest.raises(UntrustedAppError, match="names ClientApp None"):
        check_app_bundle(odd.getvalue())
    listed = _fedsyn_project()
    listed["project"]["dependencies"] = ["x" * 100_000]
    with pytest.raises(UntrustedAppError) as refused:
        check_app_bundle(_bundle(listed))
    assert len(str(refused.value)) <= 400

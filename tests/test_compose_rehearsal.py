"""``deploy/compose.yaml`` rehearsed without Docker (opt-in: ``pytest -m slow``, needs root).

This machine has no Docker engine and no route to Docker Hub, so the images cannot be built.
What can be checked is everything the containers would do with the files as written: each
compose service runs as processes in its own mount namespace (``unshare``) with the service's
volumes bind-mounted at the container paths, ``/etc/hosts`` naming ``coordinator``, the
service's ``user:`` (``setpriv``) and environment, and the Dockerfile's ENTRYPOINT + CMD.
``deploy/examples/make-demo.sh`` prepares the files as an unprivileged host user, and the
steps at the top of ``compose.yaml`` (register the hospitals, submit the run) are run as
``compose exec`` would. Differences from Docker: the installed fedsyn is this environment's,
not the image's; and all services share one network namespace, so each hospital's loopback
API gets its own port where containers would each have their own loopback.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from fedsyn.trust.signing import load_public_key, verify_release

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
HOST_USER = 1000
# The example server.toml's 25 rounds: measured 25-30 s a round on 2 cores (each round starts three
# ClientApp processes that load torch), about 12 minutes with the set-up; 600 s cut the run at round 20.
DEADLINE_S = 1200

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("unshare", "setpriv")),
                       reason="the rehearsal needs root, unshare and setpriv"),
]


def _dockerfile_command(dockerfile: Path) -> list[str]:
    """ENTRYPOINT followed by CMD, both in JSON form as our Dockerfiles write them."""
    parts: dict[str, list[str]] = {"ENTRYPOINT": [], "CMD": []}
    for line in dockerfile.read_text().splitlines():
        instruction, _, argument = line.partition(" ")
        if instruction in parts:
            parts[instruction] = json.loads(argument)
    return parts["ENTRYPOINT"] + parts["CMD"]


def _interpolate(text: str, variables: dict[str, str]) -> str:
    """Compose's ``${NAME}`` and ``${NAME:?message}``: a missing required variable is an error."""

    def value(match: re.Match) -> str:
        name, required = match.group(1), match.group(2)
        if name not in variables and required is not None:
            raise AssertionError(f"compose would refuse: {required}")
        return variables.get(name, "")

    return re.sub(r"\$\{(\w+)(?::\?([^}]*))?\}", value, text)


def _interpreter_mounts(stage: Path) -> list[str]:
    """Shell steps that let an unprivileged user run this interpreter inside the mount namespace.

    In an image Python is installed system-wide; here it may sit under a private home
    (``/root/.pyenv``). A tmpfs over the private directory, with the interpreter's tree bound
    back into it, opens the path in the namespace only.
    """
    interpreter = Path(os.path.realpath(sys.executable))
    private = next((parent for parent in reversed(interpreter.parents) if not parent.stat().st_mode & 0o001), None)
    if private is None:
        return []
    tree = interpreter.relative_to(private).parts[0]
    stage.mkdir(exist_ok=True)
    return [f"mount --bind {private / tree} {stage}", f"mount -t tmpfs -o mode=0755 tmpfs {private}",
            f"mkdir {private / tree}", f"mount --bind {stage} {private / tree}"]


def _namespaced(steps: list[str], user: list[str], command: list[str], workdir: str) -> list[str]:
    """``command`` as ``user`` in a private mount namespace, after the root-only ``steps``."""
    script = " && ".join([*steps, f"cd {shlex.quote(workdir)}", f"exec {shlex.join(['setpriv', *user, *command])}"])
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]


class Service:
    """One compose service as namespaced processes."""

    def __init__(self, name: str, spec: dict, variables: dict[str, str], demo: Path, hosts: Path, logs: Path,
                 interpreter: list[str]):
        self.name, self.hosts, self.logs, self.interpreter = name, hosts, logs, interpreter
        uid, gid = _interpolate(spec["user"], variables).split(":")
        self.user = ["--reuid", uid, "--regid", gid, "--clear-groups"]
        self.volumes = []
        for volume in spec["volumes"]:
            source, target = volume.split(":")
            resolved = (DEPLOY / source).resolve()
            self.volumes.append((demo / resolved.relative_to(REPO / "demo-deploy"), target))
        self.environment = {**spec.get("environment", {}),
                            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        self.command = _dockerfile_command(REPO / spec["build"]["dockerfile"])

    def start(self, command: list[str] | None = None, log: str | None = None) -> subprocess.Popen:
        """The service's own command, or ``command`` as ``compose exec`` would run it."""
        mounts = [f"mount --bind {shlex.quote(str(source))} {target}" for source, target in self.volumes]
        mounts.append(f"mount --bind {shlex.quote(str(self.hosts))} /etc/hosts")
        environment = [f"{key}={value}" for key, value in self.environment.items()]
        argv = _namespaced([*self.interpreter, *mounts], self.user, ["env", *environment, *(command or self.command)],
                           "/var/lib/fedsyn")
        return subprocess.Popen(argv, stdout=open(self.logs / f"{log or self.name}.log", "a"),
                                stderr=subprocess.STDOUT)


@pytest.fixture()
def container_paths():
    """Empty mount points for the container paths; removed afterwards if this test made them."""
    made = [Path(path) for path in ("/etc/fedsyn", "/var/lib/fedsyn") if not Path(path).exists()]
    for path in made:
        path.mkdir(parents=True)
    yield
    for path in made:
        path.rmdir()


def test_compose_recipe_runs_with_the_files_as_written(container_paths):
    deadline = time.monotonic() + DEADLINE_S
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 8000)) == 0:
            pytest.skip("port 8000, the coordinator's in compose, is in use here")
    work = Path(tempfile.mkdtemp(prefix="fedsyn-compose-"))
    work.chmod(0o755)
    demo, logs = work / "demo-deploy", work / "logs"
    logs.mkdir()
    os.chown(work, HOST_USER, HOST_USER)
    # A copy of deploy/ is where make-demo.sh reads its examples: the host user prepares the files.
    shutil.copytree(DEPLOY, work / "deploy")
    interpreter = _interpreter_mounts(work / "interpreter")
    host_user = ["--reuid", str(HOST_USER), "--regid", str(HOST_USER), "--clear-groups"]
    prepared = subprocess.run(_namespaced(interpreter, host_user, ["bash", "deploy/examples/make-demo.sh", str(demo)],
                                          str(work)),
                              env={**os.environ, "PYTHON": sys.executable, "HOME": str(work)},
                              capture_output=True, text=True)
    assert prepared.returncode == 0, prepared.stderr
    variables = dict(line.split("=", 1) for line in (demo / ".env").read_text().splitlines())
    assert variables == {"FEDSYN_UID": str(HOST_USER), "FEDSYN_GID": str(HOST_USER)}
    for index in range(3):  # one network namespace here: give each hospital's loopback API its own port
        policy_path = demo / f"site-{index}" / "site.json"
        policy = json.loads(policy_path.read_text())
        policy["coordinator"]["local_port"] = 9094 + index
        policy_path.write_text(json.dumps(policy))
    hosts = work / "hosts"
    hosts.write_text("127.0.0.1 localhost coordinator\n")

    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = {name: Service(name, spec, variables, demo, hosts, logs, interpreter)
                for name, spec in compose["services"].items()}
    processes = []
    try:
        processes.append(services["coordinator"].start())
        coordinator = services["coordinator"]
        for index in range(3):
            command = ["fedsyn", "server", "sites", "add", f"/etc/fedsyn/sites/site-{index}.pub",
                       "-c", "/etc/fedsyn/server.toml"]
            while coordinator.start(command, f"sites-add-{index}").wait() != 0:
                assert time.monotonic() < deadline, (logs / f"sites-add-{index}.log").read_text()[-2000:]
                time.sleep(2)
        processes += [services[name].start() for name in ("hospital-a", "hospital-b", "hospital-c")]
        run = coordinator.start(["fedsyn", "server", "run", "-c", "/etc/fedsyn/server.toml"], "server-run")
        processes.append(run)
        while run.poll() is None:
            assert time.monotonic() < deadline, "timed out waiting for the run"
            time.sleep(2)
        assert run.returncode == 0, (logs / "server-run.log").read_text()[-3000:]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()

    release = demo / "coordinator" / "state" / "releases" / "latest"
    verify_release(release, load_public_key(demo / "coordinator" / "keys" / "coordinator.pub"))
    report = json.loads((release / "privacy_report.json").read_text())
    assert sorted(site["site"] for site in report["sites"]) == ["site-0", "site-1", "site-2"]
    for index in range(3):  # every file a container wrote belongs to the host user, keys stayed private
        state = demo / f"site-{index}" / "state"
        assert (state / "ledger.json").stat().st_uid == HOST_USER
        assert (demo / f"site-{index}" / "auth.key").stat().st_mode & 0o077 == 0
    shutil.rmtree(work)

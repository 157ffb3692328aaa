"""``deploy/rehearse.sh``: the one-command loopback federation operators rehearse with (opt-in:
``pytest -m slow``; real SuperLink, SuperNodes and ClientApp processes, 4-5 minutes on 2 cores)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "deploy" / "rehearse.sh"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("flower-superlink", path=str(Path(sys.executable).parent)) is None,
                                 reason="Flower's deployment binaries are not installed")]


def _port_in(server_toml: Path) -> int:
    return int(next(line.split("=")[1] for line in server_toml.read_text().splitlines() if line.startswith("port")))


def test_the_rehearsal_runs_a_signed_release_whose_epsilon_is_every_ledgers_and_stops_what_it_started(tmp_path):
    env = {**os.environ, "ROUNDS": "1", "FEDSYN": str(Path(sys.executable).with_name("fedsyn"))}
    out = tmp_path / "rehearsal"
    done = subprocess.run([str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    said = " ".join((done.stdout + done.stderr).split())  # rich wraps long paths at the terminal width
    assert "signature valid" in said
    for site in range(3):
        assert f"site-{site}: release says epsilon" in said
    assert said.count("(equal)") == 3 and "DIFFERENT" not in said
    with socket.socket() as probe:  # the SuperLink it started is gone with it
        assert probe.connect_ex(("127.0.0.1", _port_in(out / "coordinator" / "server.toml"))) != 0
    again = subprocess.run([str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "exists" in again.stderr

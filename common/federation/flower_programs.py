"""Where Flower's programs are: next to the interpreter fedsyn runs in, then on ``PATH``.

A service manager (systemd) or container starts ``/opt/fedsyn/venv/bin/fedsyn`` without that
virtual environment on ``PATH``. Flower's daemons also start further Flower programs
(SuperExec, ``flwr-serverapp``, ``flwr-clientapp``) by name, so the daemons get the same
search path in their environment.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

# Flower posts usage events to telemetry.flower.ai unless this is set: a persistent machine id,
# the OS and CPU count, and, at a hospital, each ClientApp run's start and exit code, one per
# coordinator message (helper-88). A site dials its coordinator and nothing else.
NO_TELEMETRY = {"FLWR_TELEMETRY_ENABLED": "0"}


def search_path(*first: Path) -> str:
    """``first`` folders, then this interpreter's scripts folder, then the inherited ``PATH``."""
    folders = [*map(str, first), str(Path(sys.executable).parent), os.environ.get("PATH", "")]
    return os.pathsep.join(folders)


def flower_program(name: str, path: str | None = None) -> str:
    """Full path of a Flower program (``flower-superlink``, ``flwr``...), or its bare name if not found."""
    return shutil.which(name, path=path or search_path()) or name

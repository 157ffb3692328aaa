"""One result row of the wide-table bench: printed as a JSON line and, with a file, appended to it.

Plain standard library, so each script can import it whichever environment runs it (the
project's, the judge's or the peers')."""

from __future__ import annotations

import json
from pathlib import Path


def emit(row: dict, json_path: Path | None) -> None:
    """Print ``row`` as one JSON line; also append it to ``json_path`` when given."""
    line = json.dumps(row)
    print(line, flush=True)
    if json_path is not None:
        with json_path.open("a") as handle:
            handle.write(line + "\n")

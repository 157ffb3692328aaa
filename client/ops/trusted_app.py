"""The site's check of the Flower App bundle (FAB) a coordinator pushes, before anything of it runs.

Flower runs, on each SuperNode, the ClientApp that the coordinator's App bundle names. A
coordinator could therefore ship its own code in place of the hospital's privacy guard, or a
``fedsyn/`` folder that shadows the installed one. Flower's own answer, trusted-entity
signatures (``flower-supernode --trusted-entities``), is accepted by the 1.41 SuperNode only
when the SuperLink attaches a Flower Hub licence verification (``valid_license``), which a
self-hosted open-source SuperLink never does. So the hospital checks the bundle itself:

* it holds no code: ``pyproject.toml`` and Flower's ``.info/CONTENT`` manifest, nothing else;
* its ClientApp component is :data:`GUARD_COMPONENT`, the guard of the fedsyn the site installed;
* it asks for no Python dependencies (they could replace fedsyn at install time);
* if the site lists approved bundle hashes, its SHA-256 is one of them.
"""

from __future__ import annotations

import io
import tomllib
import zipfile

from fedsyn.errors import PrivacyRefusal, public_text
from fedsyn.federation.app_bundle import bundle_hash

GUARD_COMPONENT = "fedsyn.client.deploy:app"
ALLOWED_FILES = frozenset({"pyproject.toml", ".info/CONTENT"})


class UntrustedAppError(PrivacyRefusal, RuntimeError):
    """The coordinator's App bundle could run code other than the site's installed guard. Its
    text goes back to the coordinator and into the site's trail: bounded (:func:`public_text`),
    as it may quote the bundle's own names."""

    def __init__(self, reason: str):
        super().__init__(public_text(reason))


def check_app_bundle(content: bytes, approved_hashes: frozenset[str] = frozenset()) -> str:
    """Refuse a bundle the site's installed fedsyn would not be the one to run; return its hash."""
    digest = bundle_hash(content)
    if approved_hashes and digest not in approved_hashes:
        raise UntrustedAppError(f"App bundle {digest} is not in this site's approved_apps; if the coordinator "
                                "published this hash to you, add it to approved_apps in the site policy")
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as bundle:
            names = set(bundle.namelist())
            extra = sorted(names - ALLOWED_FILES)
            if extra:
                raise UntrustedAppError(f"App bundle {digest} carries files besides pyproject.toml "
                                        f"({', '.join(extra[:5])}); a fedsyn App holds no code, so this one "
                                        "could replace the site's guard")
            project = tomllib.loads(bundle.read("pyproject.toml").decode("utf-8"))
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UntrustedAppError(f"App bundle {digest} is not a readable Flower App: {exc}") from None
    component = _entry(project, "tool", "flwr", "app", "components", "clientapp")
    if component != GUARD_COMPONENT:
        raise UntrustedAppError(f"App bundle {digest} names ClientApp {component!r}; this site only runs "
                                f"{GUARD_COMPONENT!r} from the fedsyn it installed")
    dependencies = _entry(project, "project", "dependencies") or []
    if dependencies:
        raise UntrustedAppError(f"App bundle {digest} asks to install {dependencies}; a fedsyn App needs none")
    return digest


def _entry(table: object, *keys: str) -> object:
    """``table[keys[0]][keys[1]]...``, or None where a level is missing or is no table: a
    ``tool = "x"`` raised AttributeError, which Flower sent back with the bundle's own text
    and which left no ``app-refused`` line in the trail (helper-88)."""
    for key in keys:
        if not isinstance(table, dict):
            return None
        table = table.get(key)
    return table

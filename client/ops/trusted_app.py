"""The site's check of the Flower App bundle (FAB) a coordinator pushes, before anything of it runs.

Flower runs, on each SuperNode, the ClientApp that the coordinator's App bundle names. A
coordinator could therefore ship its own code in place of the hospital's privacy guard, or a
``fedsyn/`` folder that shadows the installed one. Flower's own answer, trusted-entity
signatures (``flower-supernode --trusted-entities``), is accepted by the 1.41 SuperNode only
when the SuperLink attaches a Flower Hub licence verification (``valid_license``), which a
self-hosted open-source SuperLink never does. So the hospital checks the bundle itself:

* it holds no code: ``pyproject.toml`` and Flower's ``.info/CONTENT`` manifest, nothing else;
* its ClientApp component is :data:`GUARD_COMPONENT`, the guard of the fedsyn the site installed;
* it asks for no Python dependencies (they could replace fedsyn at install time; the site's
  ClientApp process never runs Flower's runtime dependency install either, which would build the
  bundle's project: :func:`fedsyn.client.ops.clientapp_process.main`);
* its publisher, name and version are plain names: Flower installs the bundle into a folder
  named after them, and a ``..`` there wrote it outside the site's Flower home (helper-118);
* if the site lists approved bundle hashes, its SHA-256 is one of them.

Flower then loads the ClientApp from the folder the *run* names (its ``fab_id`` and
``fab_version``, the coordinator's word), not from the bundle it checked: :func:`check_run_names`
holds the two to the checked bundle's own names.
"""

from __future__ import annotations

import io
import re
import tomllib
import zipfile

from fedsyn.errors import PrivacyRefusal, public_text
from fedsyn.federation.app_bundle import bundle_hash

GUARD_COMPONENT = "fedsyn.client.deploy:app"
ALLOWED_FILES = frozenset({"pyproject.toml", ".info/CONTENT"})
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+-]*(?:\.[A-Za-z0-9_+-]+)*")  # no '/', no '..', no leading '.'


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
    unsafe = [name for name in bundle_names(project) if not _plain(name)]
    if unsafe:
        raise UntrustedAppError(f"App bundle {digest}: its publisher, name and version must be plain names (letters, "
                                f"digits, '.', '_', '+', '-'; no '/' or '..'), not {unsafe[0]!r}: Flower installs "
                                "the bundle into a folder named after them")
    return digest


def _plain(name: object) -> bool:
    return isinstance(name, str) and _PLAIN_NAME.fullmatch(name) is not None


def bundle_names(project: dict[str, object]) -> tuple[object, object, object]:
    """The bundle's publisher, name and version, where Flower reads them (its ``fab_id`` is
    ``publisher/name``)."""
    return (_entry(project, "tool", "flwr", "app", "publisher"), _entry(project, "project", "name"),
            _entry(project, "project", "version"))


def check_run_names(content: bytes, fab_id: str, fab_version: str) -> None:
    """Refuse a run whose ``fab_id`` and ``fab_version`` are not the names in its bundle
    ``content``: Flower loads the ClientApp from the folder they name, which a hostile
    coordinator could point at another App on the site's machine (helper-118 M1). A bundle
    too broken to read is left to :func:`check_app_bundle`, which refuses it at install."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as bundle:
            project = tomllib.loads(bundle.read("pyproject.toml").decode("utf-8"))
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return
    publisher, name, version = bundle_names(project)
    if (fab_id, fab_version) != (f"{publisher}/{name}", version):
        raise UntrustedAppError(f"the run names App {fab_id!r} version {fab_version!r}, but its bundle "
                                f"{bundle_hash(content)} is {publisher}/{name} version {version}: this site loads "
                                "only the App it checked")


def _entry(table: object, *keys: str) -> object:
    """``table[keys[0]][keys[1]]...``, or None where a level is missing or is no table: a
    ``tool = "x"`` raised AttributeError, which Flower sent back with the bundle's own text
    and which left no ``app-refused`` line in the trail (helper-88)."""
    for key in keys:
        if not isinstance(table, dict):
            return None
        table = table.get(key)
    return table

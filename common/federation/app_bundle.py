"""The Flower App bundle's name on both sides: its SHA-256, as Flower names a bundle
(``fab_hash``), the coordinator publishes it (``fedsyn server app-hash``) and a hospital pins
it (``approved_apps``). Part of the wire contract, so the coordinator does not reach into the
site's code to compute what the site will check.
"""

from __future__ import annotations

import hashlib


def bundle_hash(content: bytes) -> str:
    """SHA-256 of a bundle, as Flower names it (``fab_hash``) and as sites list it to approve it."""
    return hashlib.sha256(content).hexdigest()

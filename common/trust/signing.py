"""Ed25519 keys, signatures and signed release manifests (``cryptography``).

A release is trusted when its ``manifest.json`` lists the SHA-256 of every file in the
bundle and ``manifest.sig`` is the coordinator's signature over the manifest's bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedsyn.errors import FedsynError

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"


class VerificationError(FedsynError, ValueError):
    """A signature or hash does not match; the message names the place."""


def generate_keypair(folder: Path, name: str = "coordinator") -> tuple[Path, Path]:
    """Write ``NAME.key`` (private, mode 0600) and ``NAME.pub`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private = folder / f"{name}.key"
    public = folder / f"{name}.pub"
    descriptor = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(Path(path).read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key")
    return key


def sign(key: Ed25519PrivateKey, data: bytes) -> str:
    return base64.b64encode(key.sign(data)).decode("ascii")


def check_signature(key: Ed25519PublicKey, data: bytes, signature: str, what: str) -> None:
    try:
        key.verify(base64.b64decode(signature, validate=True), data)
    except (InvalidSignature, ValueError):
        raise VerificationError(f"{what}: the signature does not match (altered, or signed by another key)") from None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _bundle_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in (MANIFEST, SIGNATURE))


def sign_release(folder: Path, key: Ed25519PrivateKey) -> Path:
    """Write the manifest of every file in ``folder`` and its signature."""
    manifest = {"files": {str(p.relative_to(folder)): sha256_file(p) for p in _bundle_files(folder)}}
    data = json.dumps(manifest, indent=2, sort_keys=True).encode()
    (folder / MANIFEST).write_bytes(data)
    (folder / SIGNATURE).write_text(sign(key, data) + "\n")
    return folder / MANIFEST


@dataclass(frozen=True)
class ReleaseCheck:
    files: int


def verify_release(folder: Path, key: Ed25519PublicKey) -> ReleaseCheck:
    """Check the signature, then every file's hash; raise naming the first mismatch."""
    manifest_path, signature_path = folder / MANIFEST, folder / SIGNATURE
    for path in (manifest_path, signature_path):
        if not path.is_file():
            raise VerificationError(f"{path} is missing: the release is not signed")
    data = manifest_path.read_bytes()
    check_signature(key, data, signature_path.read_text().strip(), str(manifest_path))
    listed = json.loads(data)["files"]
    for name, digest in sorted(listed.items()):
        path = folder / name
        if not path.is_file():
            raise VerificationError(f"{name}: listed in the manifest but missing")
        if sha256_file(path) != digest:
            raise VerificationError(f"{name}: content differs from the signed manifest")
    extra = [str(p.relative_to(folder)) for p in _bundle_files(folder) if str(p.relative_to(folder)) not in listed]
    if extra:
        raise VerificationError(f"{extra[0]}: present but not in the signed manifest")
    return ReleaseCheck(files=len(listed))

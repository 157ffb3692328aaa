"""TLS certificates and SuperNode authentication keys, made with ``cryptography``.

The coordinator runs a small CA: it signs the SuperLink's server certificate (with the
host names and addresses hospitals dial as subject alternative names) and gives hospitals
only ``ca.crt``. Each hospital makes its own EC P-384 key pair for SuperNode authentication
and sends only the public half to the coordinator, who registers it. Private keys are
written with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALIDITY_DAYS = 365


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedsyn"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def create_ca(folder: Path, name: str = "fedsyn coordinator CA") -> tuple[Path, Path]:
    """``ca.crt`` (give to every hospital) and ``ca.key`` (keep on the coordinator, offline if possible).

    Each CA is named apart (``name``, its creation time and serial) and carries its key's
    identifier, which the server certificates it signs name: so a site can trust the old and
    the new CA at once while the coordinator rotates, in either order. Two CAs of one name in a
    site's bundle made TLS check the server against the first of that name only (the new CA
    first refused the old server certificate: measured with gRPC, helper-115)."""
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    serial = x509.random_serial_number()
    own_name = _name(f"{name} {now:%Y-%m-%d %H:%M:%S} {serial % 16 ** 8:08x}")
    certificate = (
        x509.CertificateBuilder().subject_name(own_name).issuer_name(own_name)
        .public_key(key.public_key()).serial_number(serial)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=VALIDITY_DAYS * 5))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA384())
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ca.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    _write_private(folder / "ca.key", _pem_key(key))
    return folder / "ca.crt", folder / "ca.key"


def create_server_certificate(folder: Path, hosts: list[str], ca_folder: Path | None = None) -> tuple[Path, Path]:
    """``server.crt`` / ``server.key`` for the SuperLink, valid for every name or IP in ``hosts``."""
    ca_folder = ca_folder or folder
    ca_key = serialization.load_pem_private_key((ca_folder / "ca.key").read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca_folder / 'ca.key'} is not the elliptic-curve CA key fedsyn creates")
    ca_certificate = x509.load_pem_x509_certificate((ca_folder / "ca.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP384R1())
    alternative_names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alternative_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alternative_names.append(x509.DNSName(host))
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca_certificate.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    (folder / "server.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    _write_private(folder / "server.key", _pem_key(key))
    return folder / "server.crt", folder / "server.key"


def certificate_hosts(path: Path) -> list[str]:
    """The names and IPs a certificate is valid for (its subject alternative names), in order:
    what a renewal keeps unless told otherwise."""
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(name.value) for name in names if isinstance(name, (x509.DNSName, x509.IPAddress))]


def expired(path: Path, now: dt.datetime | None = None, *, bundle: bool = False) -> dt.datetime | None:
    """When the PEM certificate at ``path`` expired, or None while it is valid: Flower's SuperLink
    starts with an expired certificate without a word, and every hospital's handshake then fails.

    A certificate file's first certificate is the one presented, so it alone counts. A
    ``bundle`` of trusted CAs is expired only when every one is (then: when the last one did):
    a site trusting the old and the new CA while the coordinator rotates was refused on the
    old one's date (helper-100)."""
    certificates = x509.load_pem_x509_certificates(path.read_bytes())
    expiry = max(c.not_valid_after_utc for c in certificates) if bundle else certificates[0].not_valid_after_utc
    return expiry if expiry <= (now or dt.datetime.now(dt.UTC)) else None


def create_site_keypair(folder: Path) -> tuple[Path, Path]:
    """``auth.key`` (stays at the hospital) and ``auth.pub`` (sent to the coordinator), OpenSSH
    EC P-384 as Flower's SuperNode authentication expects."""
    key = ec.generate_private_key(ec.SECP384R1())
    _write_private(folder / "auth.key", key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.OpenSSH,
                                                          serialization.NoEncryption()))
    (folder / "auth.pub").write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                    serialization.PublicFormat.OpenSSH) + b"\n")
    return folder / "auth.key", folder / "auth.pub"

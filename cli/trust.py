"""Trust commands: signing keys, audit-trail and release verification, TLS certificates."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedsyn.cli.output import console

keys_app = typer.Typer(help="Signing keys of the coordinator.")
audit_app = typer.Typer(help="Tamper-evident audit trails.")


FORCE = typer.Option("--force", help="replace the existing keys (what they signed or admitted no longer checks)")


def _refuse_to_replace(paths: list[Path], why: str) -> None:
    """Stop before a key is overwritten: an operator's second `certs init` replaced the CA every
    site trusts, and a second `keys generate` the key earlier releases verify against, silently."""
    existing = [str(path) for path in paths if path.exists()]
    if existing:
        console.print(f"[red]{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}[/]: {why}. "
                      "Give another --out, or --force to replace them.")
        raise typer.Exit(2)


@keys_app.command("generate")
def keys_generate(out: Path = Path("keys"), name: str = "coordinator",
                  force: Annotated[bool, FORCE] = False) -> None:
    """Create an Ed25519 key pair: NAME.key (private, mode 0600) and NAME.pub (share it)."""
    from fedsyn.trust.signing import generate_keypair

    if not force:
        _refuse_to_replace([out / f"{name}.key", out / f"{name}.pub"],
                           "releases and audit logs signed with them would no longer verify against the new key")
    private, public = generate_keypair(out, name)
    console.print(f"private key {private} (keep it on the coordinator only), public key {public}")


@audit_app.command("verify")
def audit_verify(log: Path, key: Annotated[Path | None, typer.Option(help="coordinator.pub")] = None) -> None:
    """Check an audit log's hash chain (and its signed head with --key); exit 1 naming the
    first broken entry."""
    from fedsyn.trust.audit import verify_log
    from fedsyn.trust.signing import VerificationError, load_public_key

    try:
        entries = verify_log(log, load_public_key(key) if key else None)
    except (VerificationError, OSError, ValueError) as exc:
        console.print(f"[red]FAILED[/] {exc}")
        raise typer.Exit(1) from None
    console.print(f"[green]OK[/] {log}: {entries} entries, chain intact" + (", head signature valid" if key else ""))


def verify(release: Path, key: Annotated[Path, typer.Option(help="the coordinator's public key")]) -> None:
    """Check a release bundle against its signed manifest; exit 1 naming the first bad file."""
    from fedsyn.trust.signing import VerificationError, load_public_key, verify_release

    try:
        checked = verify_release(release, load_public_key(key))
    except (VerificationError, OSError, ValueError) as exc:
        console.print(f"[red]FAILED[/] {exc}")
        raise typer.Exit(1) from None
    console.print(f"[green]OK[/] {release}: signature valid, {checked.files} files match the manifest")


certs_app = typer.Typer(help="TLS certificates (coordinator) and SuperNode keys (hospital).")
@certs_app.command("init")
def certs_init(out: Path = Path("certs"),
               host: Annotated[list[str] | None, typer.Option(help="name or IP hospitals dial (repeat)")] = None,
               renew_server: Annotated[bool, typer.Option(
                   "--renew-server", help="keep the CA in OUT and issue a new server certificate, for the old "
                                          "one's names unless --host is given (nothing changes at the hospitals)")
               ] = False,
               force: Annotated[bool, FORCE] = False) -> None:
    """Coordinator: create a CA and the SuperLink's server certificate for HOSTs (default localhost)."""
    from fedsyn.trust.certs import certificate_hosts, create_ca, create_server_certificate

    hosts = list(host or ["localhost", "127.0.0.1"])
    if renew_server:
        if not (out / "ca.key").is_file():
            console.print(f"[red]{out / 'ca.key'} not found[/]: --renew-server signs the new server certificate "
                          "with the CA that `fedsyn certs init` created there")
            raise typer.Exit(2)
        if not host and (out / "server.crt").is_file():  # the names hospitals dial: kept (helper-80)
            hosts = certificate_hosts(out / "server.crt")
        create_server_certificate(out, hosts)
        console.print(f"{out}/server.crt renewed with the same CA for {', '.join(hosts)} (restart the SuperLink; "
                      "hospitals change nothing), private key server.key (mode 0600)")
        return
    if not force:
        _refuse_to_replace([out / "ca.key", out / "ca.crt"], "every hospital trusts this CA; to renew the server "
                           "certificate keep it (--renew-server), to rotate the CA see docs/coordinator.md")
    create_ca(out)
    create_server_certificate(out, hosts)
    console.print(f"{out}/ca.crt (give to hospitals), {out}/server.crt, private keys ca.key and server.key "
                  "(mode 0600, never leave this machine)")


@certs_app.command("site-key")
def certs_site_key(out: Path = Path("."), force: Annotated[bool, FORCE] = False) -> None:
    """Hospital: create this site's SuperNode key pair; send only auth.pub to the coordinator."""
    from fedsyn.trust.certs import create_site_keypair

    if not force:
        _refuse_to_replace([out / "auth.key", out / "auth.pub"], "the coordinator admits this site by its "
                           "auth.pub; a new pair must be sent and added again (`fedsyn server sites add`)")
    private, public = create_site_keypair(out)
    console.print(f"{private} stays here (mode 0600); send {public} to the coordinator")



"""The SuperNode launch of a hospital: check the extract, then say how to start ``flower-supernode``.

The launch puts the site's own ``flwr-clientapp`` first on the SuperNode's ``PATH``
(:mod:`fedsyn.client.ops.clientapp_process`), so that no App bundle other than the one naming
the installed guard is installed or imported (:mod:`fedsyn.client.ops.trusted_app`), and gives it
a Flower home of its own (``flower-home/`` beside the ledger). The site policy path goes on the
SuperNode's own ``--node-config``, never through the coordinator.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from fedsyn.client.ops.clientapp_process import install_launcher
from fedsyn.client.ops.supervise import SiteRuntime
from fedsyn.client.policy import PolicyError, SitePolicy
from fedsyn.client.site import Site, replies_folder
from fedsyn.data.validation import ValidationReport, WidespreadProblems
from fedsyn.federation.flower_programs import NO_TELEMETRY, flower_program, search_path
from fedsyn.privacy.accounting import ledger_lock
from fedsyn.trust.certs import expired

log = logging.getLogger("fedsyn.client")


@dataclass(frozen=True)
class SupernodeLaunch:
    """The ``flower-supernode`` command line, the environment variables it must run with, and
    the site's ``flwr-clientapp`` launcher to write (:meth:`install`) before it starts."""

    command: list[str]
    environment: dict[str, str]
    launcher_folder: Path
    policy_path: Path

    def install(self) -> None:
        """Write the launcher naming this start's policy file, which every request of the
        SuperNode's apps reads. Only once no other start of this site runs: a second start, refused
        as a duplicate, had rewritten it first, and the running daemon served every later request
        under the other file's limits and extract (helper-98 H2)."""
        install_launcher(self.launcher_folder, self.policy_path)


def _check_root_certificates(path: Path) -> None:
    """The coordinator's CA certificate this site trusts, present and unexpired: Flower's own
    error for a missing file names no path, and an expired CA fails every handshake as an
    expired server certificate does, whose renewal does not help (helper-98 M5)."""
    if not path.is_file():
        raise PolicyError(f"root_certificates file not found: {path}. Copy the coordinator's ca.crt there, or point "
                          "root_certificates in the site policy's coordinator section at it")
    try:
        expiry = expired(path, bundle=True)
    except ValueError:
        raise PolicyError(f"root_certificates {path} is not a PEM certificate: ask the coordinator for its "
                          "ca.crt") from None
    some = expired(path)  # the first in the bundle (helper-103: an expired one beside a valid one passed unsaid)
    if expiry is None and some is not None:
        log.warning("root_certificates %s: a CA certificate in it expired on %s; another is valid, as while the "
                    "coordinator changes its CA. If the coordinator has not changed its CA, ask it for its ca.crt",
                    path, f"{some:%Y-%m-%d}")
    if expiry is not None:
        raise PolicyError(f"root_certificates {path}: the coordinator's CA certificate expired on "
                          f"{expiry:%Y-%m-%d}, so no certificate it signed is trusted. The coordinator needs a new CA "
                          "(`fedsyn certs init`) and sends its ca.crt to every site; renewing only the server "
                          "certificate does not help")


def supernode_launch(policy_path: Path) -> SupernodeLaunch:
    """Check the site's data against the schema, then say how to start its SuperNode.

    Refuses (raising with a report) when the extract does not fit: a site never joins with
    data it cannot train on, nor with a problem in more of its records than the policy's
    ``max_problem_share`` leaves to ``out_of_domain`` (a column that changed form), nor with a
    row count a request would refuse (:meth:`Site.row_count_refusal`). Each request
    screens the extract again and handles its records one by one, never refusing on a share:
    a refusal decided by how many records fail would tell the coordinator that share.
    """
    policy = SitePolicy.load(policy_path)
    problem = policy.deployment_problem()
    if problem is not None:
        raise PolicyError(f"{policy_path}: {problem}")
    if policy.coordinator is None:
        raise PolicyError(f"{policy_path} has no [coordinator] section (superlink, root_certificates, "
                          "auth_private_key): add it to join a federation")
    site = Site(policy)
    screening = site.screened()  # raises LedgerError without a ledger, DataValidationError naming rows
    refusal = site.row_count_refusal(len(screening.frame))
    if refusal is not None:  # before joining: a request refused on the row count tells it to the coordinator
        raise PolicyError(f"{policy_path}: {refusal.public_reason}")
    widespread = screening.widespread(policy.max_problem_share)
    if widespread:  # before joining: the coordinator sees a site that has not come, not a refusal
        raise WidespreadProblems(ValidationReport(widespread, screening.records),
                                 policy.max_problem_share, str(policy.data))
    for note in screening.notes:  # the operator hears them once, here (no counts: `fedsyn validate` has them)
        log.warning("extract %s: %s", policy.data, note.named())
    connection = policy.coordinator
    _check_root_certificates(connection.root_certificates)
    launchers = policy.ledger.parent / "flower-bin"
    path = search_path(launchers)
    command = [
        flower_program("flower-supernode", path),
        "--superlink", connection.superlink,
        "--root-certificates", str(connection.root_certificates),
        "--auth-supernode-private-key", str(connection.auth_private_key),
        "--node-config", f'policy="{Path(policy_path).resolve()}"',
        "--port", str(connection.local_port),
    ]
    # The site's own Flower home: Flower installs each App bundle under it and loads the ClientApp from
    # there, so no App another Flower user installed in a shared ~/.flwr can be loaded in its place.
    home = str((policy.ledger.parent / "flower-home").resolve())
    return SupernodeLaunch(command, {"PATH": path, "FLWR_HOME": home, **NO_TELEMETRY}, launchers, Path(policy_path))


def site_runtime(policy: SitePolicy) -> SiteRuntime:
    """What the supervisor keeps and checks for this site: its record beside the ledger, its local
    port and key, and the files a round writes (ledger, lock, stored replies, audit trail)."""
    from fedsyn.client.ops.supervise import SiteRuntime

    ledger = policy.ledger
    connection = policy.coordinator
    return SiteRuntime(folder=ledger.parent, local_port=connection.local_port if connection else None,
                       key_file=connection.auth_private_key if connection else None,
                       writes=(ledger, ledger_lock(ledger), replies_folder(ledger), policy.audit_trail),
                       superlink=connection.superlink if connection else None,
                       root_certificates=connection.root_certificates if connection else None)

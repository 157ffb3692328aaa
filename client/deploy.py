"""Deployment entry points of a hospital: the ClientApp Flower loads, and the SuperNode command.

The Flower App names ``fedsyn.client.deploy:app`` as its ClientApp, so the SuperNode runs
the privacy guard from the fedsyn package the hospital installed. The site policy path
comes from the SuperNode's own ``--node-config``, never from the coordinator.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fedsyn.client.app import make_client_app, policy_from_node_config
from fedsyn.client.policy import PolicyError, SitePolicy
from fedsyn.client.site import Site

app = make_client_app(policy_from_node_config)


def supernode_command(policy_path: Path) -> list[str]:
    """Check the site's data against the schema, then the ``flower-supernode`` command line.

    Refuses (raising with a report) when the extract does not fit: a site never joins with
    data it cannot train on.
    """
    policy = SitePolicy.load(policy_path)
    if policy.coordinator is None:
        raise PolicyError(f"{policy_path} has no [coordinator] section (superlink, root_certificates, "
                          "auth_private_key): add it to join a federation")
    Site(policy).load_data()  # raises DataValidationError naming columns and rows
    connection = policy.coordinator
    return [
        shutil.which("flower-supernode") or "flower-supernode",
        "--superlink", connection.superlink,
        "--root-certificates", str(connection.root_certificates),
        "--auth-supernode-private-key", str(connection.auth_private_key),
        "--node-config", f'policy="{Path(policy_path).resolve()}"',
        "--port", str(connection.local_port),
    ]

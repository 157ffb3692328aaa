"""The ClientApp Flower loads at a hospital: the privacy guard, with the site policy the SuperNode names.

Its import path, ``fedsyn.client.deploy:app``, is the ClientApp component of the coordinator's
App bundle: every site refuses a bundle naming any other
(:data:`fedsyn.client.ops.trusted_app.GUARD_COMPONENT`), and sites pin the bundle's hash, so the
path stays put. The site policy path comes from the SuperNode's own ``--node-config``, never
from the coordinator. How the SuperNode is started is operations code
(:mod:`fedsyn.client.ops.launch`).
"""

from __future__ import annotations

from fedsyn.client.app import make_client_app, policy_from_node_config

app = make_client_app(policy_from_node_config)

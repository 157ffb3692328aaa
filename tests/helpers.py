"""Helpers shared by test modules (kept here so no test module imports another)."""

from __future__ import annotations

from pathlib import Path

import dp_accounting
from dp_accounting import pld, rdp
from flwr.app import Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from fedsyn.client.app import make_client_app, policy_from_node_config
from fedsyn.client.policy import SitePolicy
from fedsyn.model.config import GANConfig
from fedsyn.privacy.accounting import rdp_orders
from fedsyn.server.app import ReleasePlan, run_federation
from fedsyn.server.settings import FederationSettings
from fedsyn.simulations.inprocess import InProcessGrid

# A small network: the tests check behaviour, not utility.
TINY = GANConfig(latent_dim=16, generator_hidden=(32,), discriminator_hidden=(32,), batch_size=64)


def independent_epsilon(events, delta, accountant):
    """Google's dp-accounting, a second implementation sharing no code with Opacus."""
    engine = rdp.RdpAccountant(rdp_orders(events)) if accountant == "rdp" else pld.PLDAccountant()
    engine.compose(dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(e.sample_rate, dp_accounting.GaussianDpEvent(e.noise_multiplier)),
            e.steps)
        for e in events]))
    return engine.get_epsilon(delta)


# A short federation of three demo sites (see the ``plan`` fixture in conftest.py).
SETTINGS = FederationSettings(rounds=3, local_steps=4, sample_rate=0.2, epsilon=1.0, delta=1e-5,
                              gan_config=TINY, seed=0, min_sites=2)


def run_in_process(plan, schema, folder, settings=SETTINGS, reply_filter=None):
    """Run ``settings`` over the simulated sites of ``plan`` on the in-process grid; the release
    goes to ``folder/release``. Returns the grid (it keeps every message) and the coordinator."""
    grid = InProcessGrid(make_client_app(plan.site_policy), len(plan.policies), reply_filter)
    coordinator = run_federation(grid, schema, settings, ReleasePlan(folder / "release", rows=500))
    return grid, coordinator


class CoordinatorCrash(Exception):
    """Stands for the coordinator's process dying."""


class CrashingGrid(InProcessGrid):
    """Delivers every message; dies right after the sites answered the ``crash_at``-th request
    of type ``crash_on`` (a training round unless told otherwise)."""

    def __init__(self, *args, crash_at: int | None = None, crash_on: str = "train", **kwargs):
        super().__init__(*args, **kwargs)
        self.crash_at, self.crash_on = crash_at, crash_on
        self.answered = 0

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        replies = super().send_and_receive(messages, timeout=timeout)
        if messages and messages[0].metadata.message_type == self.crash_on:
            self.answered += 1
            if self.answered == self.crash_at:
                raise CoordinatorCrash
        return replies


def client_reply(policy_path: Path | str, content: RecordDict, message_type: str, deployed: bool = False) -> Message:
    """What a site's real Flower ClientApp answers to one coordinator message: a Flower
    Message in, a Message out, through the same decoding, guard and refusal handling as a
    deployment (the site is built afresh from its policy file, as for every message).
    ``deployed``: the policy is found as a SuperNode finds it, through its node config."""
    app = make_client_app(policy_from_node_config if deployed else lambda _: SitePolicy.load(policy_path))
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, SUPERLINK_NODE_ID, 1  # as a ServerApp
    context = Context(run_id=1, node_id=5, state=RecordDict(), run_config={},
                      node_config={"policy": str(policy_path)} if deployed else {})
    message = Message(content, dst_node_id=5, message_type=message_type, group_id="1")
    message.metadata.__dict__["_message_id"] = "m1"
    return app(message, context)


def cut_fits_short(monkeypatch, epochs: float = 0.05) -> None:
    """Every ``DPTabularGAN`` made from now on (in this test) fits for at most ``epochs``: a few
    DP-SGD steps, for tests that run examples or benchmarks, not models."""
    import functools

    from fedsyn.model.gan import DPTabularGAN

    original = DPTabularGAN.__init__

    @functools.wraps(original)
    def quick(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.epochs = min(self.epochs, epochs)

    monkeypatch.setattr(DPTabularGAN, "__init__", quick)


def expired_certificate(path: Path) -> Path:
    """A self-signed PEM certificate at ``path`` whose validity ended 35 days ago (a server's, or
    a CA a site trusts)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(1).not_valid_before(now - dt.timedelta(days=400))
                   .not_valid_after(now - dt.timedelta(days=35)).sign(key, hashes.SHA384()))
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path

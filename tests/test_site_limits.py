"""A site's policy bounds what a coordinator may ask: clipping norm, sample rate, learning
rates, width, depth, steps, batch and site slots. Each request outside the limits is refused before
anything is charged; the defaults admit fedsyn's own settings."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from pydantic import ValidationError

from fedsyn.client.policy import PolicyError, RequestLimits, SitePolicy
from fedsyn.client.site import Site, SiteRefusal
from fedsyn.data.demo import demo_schema_path
from fedsyn.federation import protocol
from fedsyn.privacy.accounting import PrivacyLedger
from fedsyn.privacy.marginals import Marginals
from fedsyn.server.settings import FEDERATED_GAN, FEDERATED_LOCAL_STEPS, FederationSettings
from fedsyn.simulations.run import prepare_sites

from .helpers import TINY

DEFAULTS = RequestLimits()


def test_the_documented_defaults():
    assert DEFAULTS.model_dump() == {
        "min_clip_norm": 1e-3, "max_clip_norm": 100.0, "max_sample_rate": 0.5, "max_learning_rate": 0.1,
        "max_width": 1024, "max_layers": 4, "max_local_steps": 200, "max_batch_size": 8192,
        "max_site_slots": 128}


def test_the_defaults_admit_fedsyns_own_settings():
    settings = FederationSettings()
    assert DEFAULTS.problems(FEDERATED_GAN, settings.sample_rate, FEDERATED_LOCAL_STEPS) == []


HOSTILE = {
    "clipping norm far below the floor": (replace(TINY, max_grad_norm=1e-28), 0.2, 3),
    "clipping norm far above the ceiling": (replace(TINY, max_grad_norm=1e5), 0.2, 3),
    "every record in every batch": (TINY, 1.0, 3),
    "huge learning rate": (replace(TINY, discriminator_lr=1.0), 0.2, 3),
    "too wide": (replace(TINY, discriminator_hidden=(4096,)), 0.2, 3),
    "too deep": (replace(TINY, discriminator_hidden=(8,) * 8), 0.2, 3),
    "too many steps": (TINY, 0.2, 10_000),
    "huge batch": (replace(TINY, batch_size=100_000), 0.2, 3),
    "thousands of site slots": (replace(TINY, site_slots=4096), 0.2, 3),
}


@pytest.mark.parametrize("config, sample_rate, steps", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_request_beyond_the_sites_limits_is_refused_before_any_charge(tmp_path, small_frame, config, sample_rate,
                                                                        steps):
    plan = prepare_sites([small_frame], demo_schema_path(), tmp_path / "sites", epsilon=50.0, delta=1e-5)
    policy = SitePolicy.load(plan.policies[0])
    site = Site(policy.model_copy(update={"limits": RequestLimits()}))  # a deployment's defaults
    request = protocol.TrainInstructions(round=1, total_rounds=1, local_steps=steps, sample_rate=sample_rate,
                                         epsilon=50.0, noise_multiplier=1.0, gan_config=config,
                                         schema_sha256=protocol.schema_fingerprint(site.schema))
    with pytest.raises(SiteRefusal) as refused:
        site.train(request, {}, Marginals.uniform(site.schema))
    assert refused.value.code == protocol.ErrorCode.POLICY_REFUSED
    assert "limits" in refused.value.public_reason
    assert PrivacyLedger.load(policy.ledger).events == []


def test_limits_are_read_from_the_policy_file(tmp_path):
    raw = {"site_id": "a", "data": "d.csv", "schema": "s.json", "ledger": "l.json", "max_epsilon": 1.0,
           "delta": 1e-6, "limits": {"max_sample_rate": 0.2, "max_width": 256}}
    path = tmp_path / "site.json"
    path.write_text(json.dumps(raw))
    limits = SitePolicy.load(path).limits
    assert (limits.max_sample_rate, limits.max_width, limits.min_clip_norm) == (0.2, 256, 1e-3)


@pytest.mark.parametrize("where", ["", "coordinator"])
def test_a_misspelled_policy_key_is_refused_by_name(tmp_path, where):
    """helper-98 H3: 'max_epsilon_per_requst' was ignored, so the per-request cap the hospital
    believed it had set was never enforced."""
    raw = {"site_id": "a", "data": "d.csv", "schema": "s.json", "ledger": "l.json", "max_epsilon": 1.0, "delta": 1e-6}
    if where:
        raw["coordinator"] = {"superlink": "c:9092", "root_certificates": "ca.crt", "auth_private_key": "auth.key",
                              "local_prot": 9095}
    else:
        raw["max_epsilon_per_requst"] = 0.1
    path = tmp_path / "site.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(PolicyError, match="(max_epsilon_per_requst|coordinator.local_prot): not a known setting"):
        SitePolicy.load(path)


@pytest.mark.parametrize("name", ["h2 | 0.010 | 0.010 | 1 | 0 |", "st-mary <!--", "ward\x1b[2K", " padded", "x" * 65])
def test_a_site_name_the_coordinator_would_show_otherwise_is_refused_and_a_sent_one_is_shown_plainly(tmp_path, name):
    """helper-88's F3: a site_id of 'h2 | 0.010 | ... <!--' added a forged row to the signed
    release README's privacy table and hid the real one; control characters moved the
    coordinator's cursor. The policy refuses such a name; the coordinator shows any name it
    receives (an older site's) as :func:`public_name` leaves it."""
    from fedsyn.errors import public_name

    raw = {"site_id": name, "data": "d.csv", "schema": "s.json", "ledger": "l.json", "max_epsilon": 1.0,
           "delta": 1e-6}
    with pytest.raises(ValidationError, match="site_id"):
        SitePolicy.model_validate(raw)
    shown = public_name(name)
    assert shown.isprintable() and not set(shown) & set("|<>`\\") and len(shown) <= 64
    assert SitePolicy.model_validate({**raw, "site_id": "St. Mary's (north)"}).site_id == "St. Mary's (north)"


def test_a_simulated_hospital_named_after_a_value_no_policy_takes_gets_the_name_the_coordinator_shows(demo_frame,
                                                                                                   demo_schema):
    """helper-89: a site column's value holding '|' became a site_id that the policy's check
    refuses: `fedsyn simulate --data --site-column` ended in an unexpected ValidationError."""
    from fedsyn.simulations.request import _split_by_site

    rows = demo_frame.head(400).assign(ward=["A|B" if index % 2 else "<north>" for index in range(400)])
    names = _split_by_site(rows, demo_schema, "ward", 0.0, None)[2]
    assert names == ("?north?", "A?B")
    for name in names:
        SitePolicy.model_validate({"site_id": name, "data": "d.csv", "schema": "s.json", "ledger": "l.json",
                                   "max_epsilon": 1.0, "delta": 1e-6})

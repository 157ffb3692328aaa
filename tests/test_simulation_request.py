"""``prepare(SimulationRequest(...))``: the set-up of ``fedsyn simulate`` as a library call, so a
notebook gets the same checks, split and settings as the command line (tests/test_cli.py runs
the command itself)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsyn.errors import ConfigurationError
from fedsyn.simulations.request import SimulationRequest, prepare


def test_the_demo_request_is_split_checked_and_planned_without_writing_anything(tmp_path):
    out = tmp_path / "run"
    prepared = prepare(SimulationRequest(split=2, rounds=1, local_steps=1, epsilon=20, sweep=(1.0,), out=out,
                                         seed=0))
    simulation = prepared.simulation
    assert len(simulation.tables) == 2 and simulation.test is not None and simulation.train is not None
    assert simulation.rows == len(simulation.train) == sum(len(t) for t in simulation.tables)
    assert simulation.settings.epsilon == 20 and simulation.sweep == (1.0,) and simulation.settings.rounds == 1
    assert prepared.site_names == ("site-0", "site-1") and simulation.site_names == ()
    assert [plan.site for plan in prepared.width_plans] == ["site-0", "site-1"] and prepared.usable
    assert any("little protection" in warning for warning in prepared.warnings)
    assert "total_site_rows" in simulation.public_facts
    assert not out.exists()


@pytest.mark.parametrize(("request_", "said"), [
    (dict(data=Path("rows.csv")), "need --schema"),
    (dict(engine="ray"), "choose inprocess or flower"),
    (dict(skew="age", dirichlet=0.5), "choose one"),
])
def test_inputs_that_cannot_go_together_are_refused_before_any_file_is_read(request_, said):
    with pytest.raises(ConfigurationError, match=said):
        SimulationRequest(**request_)


def test_a_delta_the_sites_would_refuse_is_refused_before_any_site_exists(tmp_path):
    with pytest.raises(ConfigurationError, match="1/rows"):
        prepare(SimulationRequest(split=3, delta=9e-4, out=tmp_path / "run"))

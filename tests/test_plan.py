"""The pre-flight plan computes what the sites will, and warns where the noise swamps the data."""


from fedsyn.data.schema import Schema
from fedsyn.model.config import GANConfig
from fedsyn.privacy.accounting import PrivacyEvent, PrivacyLedger, gaussian_noise_for_epsilon
from fedsyn.privacy.budget import SiteBudget, plan_site_run
from fedsyn.privacy.marginals import marginals_event, table_noise_std
from fedsyn.server.settings import FederationSettings
from fedsyn.simulations.plan import NUMERIC_GROUPS, plan_site, plan_width


def test_plan_matches_the_sites_calibration_and_grades_small_sites():
    settings = FederationSettings(epsilon=1.0, delta=1e-5, sample_rate=0.1)
    big = plan_site("big", 20_000, 9, settings)  # 9 noisy tables
    assert big.level == "green" and big.steps == settings.rounds * settings.local_steps
    marginals = marginals_event(gaussian_noise_for_epsilon(settings.marginals_share * settings.epsilon, 1e-5))
    spent = PrivacyLedger(1e-5, "rdp", [marginals, PrivacyEvent("dp-sgd", big.noise_multiplier, 0.1, big.steps)])
    assert 0.99 < spent.epsilon() <= 1.0  # the noise a site calibrates for the whole plan
    tiny = plan_site("tiny", 100, 31, FederationSettings(epsilon=1.0, delta=1e-5, sample_rate=1.0))
    assert tiny.level in ("amber", "red") and tiny.records_per_noise < 5


def test_a_simulated_site_is_planned_as_the_coordinator_plans_a_new_site():
    """One calibration: a simulated site's new ledger, capped at the run's epsilon, answers the
    coordinator's budget query with nothing spent, and its plan is that run plan's noise."""
    settings = FederationSettings(epsilon=0.5, delta=1e-5, sample_rate=0.05, rounds=4, local_steps=3)
    run = plan_site_run(SiteBudget(spent=0.0, max_epsilon=0.5, delta=1e-5), settings)
    plan = plan_site("site-0", 900, 9, settings)
    assert run.training_noise is not None and plan.noise_multiplier == run.training_noise
    assert plan.rows_per_histogram_noise == 900 / table_noise_std(9, run.marginals_noise, settings.pairs_share)
    starved = plan_site("site-0", 900, 9, FederationSettings(epsilon=0.001, delta=1e-5, marginals_share=0.5))
    assert starved.noise_multiplier is None and starved.level == "red" and starved.rows_per_histogram_noise == 0.0
    fixed = settings.model_copy(update={"noise_multiplier": 0.5})  # no training round fits at this noise
    assert plan_site_run(SiteBudget(0.0, 0.5, 1e-5), fixed).rounds_fit == 0
    unusable = plan_site("site-0", 900, 9, fixed)
    assert unusable.noise_multiplier is None and unusable.steps == 0 and unusable.level == "red"


def _wide_schema(columns: int) -> Schema:
    """A 52-column cohort as in the extracts issue: binary and 3-level codes and lab values."""
    spec = [{"name": "death", "kind": "categorical", "categories": ["0", "1"]}]
    for index in range(columns - 1):
        if index % 3 == 2:
            spec.append({"name": f"lab{index}", "kind": "continuous", "lower": 0.0, "upper": 500.0})
        else:
            spec.append({"name": f"code{index}", "kind": "categorical", "categories": ["0", "1", "2"][:2 + index % 3]})
    return Schema.model_validate({"name": "wide", "outcome": "death", "columns": spec})


def test_the_width_plan_says_a_wide_table_at_a_small_site_cannot_be_resolved_and_what_would_fix_it():
    plan = plan_width("site-0", 380, _wide_schema(52), FederationSettings(epsilon=1.0, delta=1e-5))
    assert plan.level == "red" and plan.measured_columns == 51
    assert plan.cell_noise > 30  # the noise that swamped counts of about 3
    assert plan.epsilon_needed is not None and plan.epsilon_needed > 1.0
    assert plan.keep_options and plan.keep_options[-1][0] < 51 and "or at most 13 columns" in plan.keep_advice
    assert len(plan.costliest) == 5 and all(name.startswith(("code", "lab")) for name in plan.costliest)
    narrow = plan_width("site-0", 380, _wide_schema(8), FederationSettings(epsilon=1.0, delta=1e-5))
    assert narrow.level != "red" and narrow.cell_noise < plan.cell_noise / 2


def test_following_the_width_advice_once_resolves_the_table_whichever_columns_are_kept():
    """A newcomer's 54 columns at epsilon 1: 'keep at most 30', then at 29 'keep at most 21', then
    at 21 'keep at most 17': counted for the cheapest columns, the advice moved whenever the
    columns kept had more levels. Each width it gives now holds for any columns of that many
    levels, numeric columns included."""
    settings = FederationSettings(epsilon=1.0, delta=1e-5)
    plan = plan_width("site-0", 380, _wide_schema(52), settings)
    assert len(plan.keep_options) >= 2
    for columns, levels in plan.keep_options:
        spec = [{"name": "death", "kind": "categorical", "categories": ["0", "1"]}]
        spec += [{"name": f"code{index}", "kind": "categorical", "categories": [str(v) for v in range(levels)]}
                 for index in range(columns)]
        kept = Schema.model_validate({"name": "kept", "outcome": "death", "columns": spec})
        assert plan_width("site-0", 380, kept, settings).level != "red", (columns, levels)
        if levels >= NUMERIC_GROUPS:
            spec[1:] = [{"name": f"lab{index}", "kind": "continuous", "lower": 0.0, "upper": 500.0}
                        for index in range(columns)]
            kept = Schema.model_validate({"name": "kept", "outcome": "death", "columns": spec})
            assert plan_width("site-0", 380, kept, settings).level != "red", (columns, "numeric")


def test_a_width_as_wide_as_the_table_is_said_to_be_all_of_it():
    """helper-102: at 11 columns the plan said 'keep at most 11 columns if each has at most 3
    levels', which read as 'you are at the limit'; it meant that fewer levels, not fewer
    columns, would do."""
    import re

    plan = plan_width("site-0", 150, _wide_schema(8), FederationSettings(epsilon=1.0, delta=1e-5))
    assert plan.keep_options[0][0] == plan.measured_columns and plan.keep_options[-1][0] < plan.measured_columns
    for columns, _ in plan.keep_options:
        said = re.search(rf"(all|at most) {columns} columns if each", plan.keep_advice)
        assert said is not None and (said.group(1) == "all") == (columns >= plan.measured_columns)


def test_the_width_advice_never_counts_a_column_of_one_level():
    """A newcomer was told 'keep at most 3 columns if each has at most 1 levels': a column of one
    level (a category list of one) resolves nothing to keep it for."""
    spec = _wide_schema(40).model_dump()
    spec["columns"].append({"name": "flag", "kind": "categorical", "categories": ["x"]})
    plan = plan_width("site-0", 120, Schema.model_validate(spec), FederationSettings(epsilon=1.0, delta=1e-5))
    assert plan.level == "red" and plan.keep_options and all(levels >= 2 for _, levels in plan.keep_options)
    assert " 1 levels" not in plan.keep_advice


def test_the_width_plan_is_green_for_the_demo_at_its_default_split(demo_schema):
    assert plan_width("site-0", 1837, demo_schema, FederationSettings()).level == "green"


def test_a_weak_site_sampled_whole_at_every_step_is_told_the_batch_size_that_samples_a_quarter():
    """azpro's 212-row site at the default batch 256: rate 1, noise multiplier 136; batch 64 did much better."""
    whole = FederationSettings(sample_rate=1.0)  # --batch-size 256 over a smallest site of 212 rows
    smallest, larger = plan_site("H0", 212, 5, whole), plan_site("H2", 650, 5, whole)
    assert smallest.level != "green" and "212 rows" in smallest.advice and "--batch-size 53 " in smallest.advice
    assert smallest.batch_size == 53  # what the suggested command carries (cli: _show_width)
    assert "a smaller --batch-size" in larger.advice and larger.batch_size is None  # it cannot tell the rows
    most = FederationSettings(sample_rate=0.6, gan_config=GANConfig(batch_size=128))  # 128 / 0.6: 213 rows
    assert "--batch-size 53 " in plan_site("H2", 650, 5, most).advice
    quarter = FederationSettings(sample_rate=0.3, gan_config=GANConfig(batch_size=64))
    assert "--batch-size" not in plan_site("H0", 212, 5, quarter).advice


def _azpro_schema(ward: bool = False) -> Schema:
    """azpro's shape: a binary outcome, three binary columns, length of stay, the hospital (the
    run's --site-column) and, with ``ward``, a column of six categories."""
    binary = ["0", "1"]
    spec = [{"name": name, "kind": "categorical", "categories": binary} for name in ("proc", "sex", "age75", "admit")]
    spec += [{"name": "hospital", "kind": "categorical", "categories": [f"H{k}" for k in range(5)]},
             {"name": "los", "kind": "integer", "lower": 0.0, "upper": 365.0}]
    if ward:
        spec.append({"name": "ward", "kind": "categorical", "categories": [f"W{k}" for k in range(6)]})
    return Schema.model_validate({"name": "azpro", "outcome": "proc", "columns": spec})


def test_the_width_advice_never_names_the_site_column_and_says_merge_only_where_there_is_something_to_merge():
    """A newcomer's azpro plan said 'the thinnest cells are in hospital, los, sex, age75, admit: drop
    or merge them first': hospital was the --site-column (one value per site) and three are binary."""
    settings = FederationSettings(sample_rate=1.0, site_column="hospital")
    plan = plan_width("H0", 212, _azpro_schema(), settings)
    assert plan.measured_columns == 5 and [c.column for c in plan.columns] == ["sex", "age75", "admit", "los"]
    assert plan.costliest == ["los", "sex", "age75", "admit"]  # the most bins first
    assert "hospital" not in plan.column_advice and "merge" not in plan.column_advice
    assert "drop columns your question does not need, whichever they are" in plan.column_advice
    # A newcomer's plan told them to drop age, their main predictor: the plan cannot know which matters
    assert not any(f"drop {column}" in plan.column_advice for column in plan.costliest)
    assert plan.cell_noise == plan_width("H0", 212, _azpro_schema(), FederationSettings()).cell_noise  # still measured
    wider = plan_width("H0", 212, _azpro_schema(ward=True), settings)
    assert wider.costliest[0] == "ward" and "merge categories of ward where your question allows" in wider.column_advice
    assert "hospital" not in wider.costliest
    assert plan_width("H2", 650, _azpro_schema(), settings).costliest == []  # green: nothing to name
    assert "more weak column" not in plan.column_advice  # every weak column is named


def test_the_width_advice_says_how_many_weak_columns_it_does_not_name():
    """A newcomer's plan listed age among the red columns of the table and not among 'the
    thinnest cells' (the five thinnest): the advice says how many more there are."""
    schema = Schema.model_validate({"name": "wide", "outcome": "proc", "columns": [
        {"name": "proc", "kind": "categorical", "categories": ["0", "1"]},
        *[{"name": f"lab{k}", "kind": "continuous", "lower": 0, "upper": 10} for k in range(8)]]})
    plan = plan_width("H0", 200, schema, FederationSettings())
    weak = sum(c.level != "green" for c in plan.columns)
    assert weak == 8 and len(plan.costliest) == 5
    assert "(3 more weak columns in the table above)" in plan.column_advice


def test_the_same_advice_for_several_sites_is_printed_once_naming_them(capsys, tmp_path):
    """A newcomer's four hospitals each printed the same amber --batch-size advice."""
    from fedsyn.cli import research

    whole = FederationSettings(sample_rate=1.0)
    plans = tuple(plan_site(name, 212, 5, whole) for name in ("north", "south", "east"))
    assert len({plan.advice for plan in plans}) == 1 and plans[0].level != "green"
    widths = tuple(plan_width(name, 212, _wide_schema(3), whole) for name in ("north", "south", "east"))
    research._show_site_plans("plan", plans, widths, 1.0, tmp_path)
    printed = capsys.readouterr().err
    assert printed.count(plans[0].advice[:40]) == 1 and "north, south, east" in printed


def test_a_rare_outcome_grades_the_width_in_its_rarest_class():
    """helper-124 #1: a 9 % outcome's class holds a fifth of an equal share of the rows; graded as
    an equal share, a newcomer's plan said amber for a width whose outcome effects the release
    then lost, and suggested no epsilon."""
    settings = FederationSettings(epsilon=1.0, delta=1e-5)
    even = plan_width("site-0", 1600, _wide_schema(30), settings)
    rare = plan_width("site-0", 1600, _wide_schema(30), settings, rarest_class_rows=144)
    assert even.level != "red" and rare.level == "red", (even.level, rare.level)
    assert rare.epsilon_needed is not None and rare.epsilon_needed > 1.0
    assert min(c.cell_snr for c in rare.columns) < min(c.cell_snr for c in even.columns) / 5


def test_a_site_not_red_needs_no_more_epsilon_than_it_has():
    """helper-124 #2: at epsilon 4, with no site red, the plan offered epsilon 5 (the ladder's
    next rung) as what would resolve the width."""
    plan = plan_width("site-0", 1600, _wide_schema(30), FederationSettings(epsilon=4.0, delta=1e-5))
    assert plan.level != "red" and plan.epsilon_needed == 4.0

"""Out-of-domain problems say how to fix them, and never print a cell's value."""

import numpy as np

from fedsyn.data.validation import validate_frame


def test_each_out_of_domain_problem_ends_with_its_fix_and_prints_no_value(demo_frame, demo_schema):
    """A newcomer read 'value outside the public bounds' and did not know whether to fix the rows or the schema."""
    frame = demo_frame.head(30).copy()
    frame["age"] = frame["age"].where(frame.index >= 2, 777)
    frame["sex"] = frame["sex"].astype(object).where(frame.index != 3, "Qx9")
    frame["kappa"] = frame["kappa"].where(frame.index != 4, np.nan)
    report = validate_frame(frame, demo_schema)
    lines = {problem.column: problem.describe() for problem in report.problems}
    assert lines["age"].endswith("correct those rows, or widen the schema's public bounds if such values are real")
    assert lines["sex"].endswith("correct those rows, or add the category to the schema's list if it is a real one")
    assert lines["kappa"].endswith("or mark the column nullable in the schema if values may really be missing")
    assert lines["age"].startswith("column 'age', 2 row(s) (e.g. line 2, line 3): value outside")
    assert "777" not in report.describe() and "Qx9" not in report.describe()  # patient values stay local

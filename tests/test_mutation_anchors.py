"""The mutation catalogue cannot drift from the code it guards (default suite, no mutation run).

A mutation whose anchor no longer occurs exactly once would be reported as a failure only in
the opt-in mutation run; here a refactor that moves or rewrites a privacy-critical line fails
at once, and so does a stale tests/PRIVACY_CRITICAL.md.
"""

from __future__ import annotations

import pytest

from .mutations import MUTATIONS, ROOT, TABLE, table


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.name for m in MUTATIONS])
def test_each_anchor_occurs_exactly_once_and_its_tests_exist(mutation):
    source = (ROOT / mutation.path).read_text()
    assert source.count(mutation.original) == 1, f"'{mutation.name}': anchor not found once in {mutation.path}"
    assert mutation.original != mutation.mutated
    for test in mutation.tests:
        path, _, name = test.partition("::")
        assert (ROOT / path).is_file(), test
        assert not name or f"def {name}(" in (ROOT / path).read_text(), f"'{mutation.name}': no test {test}"


def test_the_privacy_critical_table_is_current():
    assert TABLE.read_text() == table(), "regenerate it: python -m tests.mutations > tests/PRIVACY_CRITICAL.md"

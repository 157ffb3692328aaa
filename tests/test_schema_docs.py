"""docs/schema.md says what the schema code accepts and what its messages ask for."""

from pathlib import Path
from typing import get_args

import pytest

from fedsyn.data.draft import draft_schema
from fedsyn.data.schema import Column, SchemaError

SCHEMA_DOC = (Path(__file__).resolve().parent.parent / "docs" / "schema.md").read_text()


def test_every_transform_a_schema_accepts_is_documented():
    """A draft writes "transform": "linear", which the page once did not mention."""
    for transform in get_args(Column.model_fields["transform"].annotation):
        assert f'`"{transform}"`' in SCHEMA_DOC, transform


def test_the_page_and_the_refusal_ask_for_the_same_review_step(demo_frame):
    with pytest.raises(SchemaError, match="set needs_review to false"):
        draft_schema(demo_frame.head(50)).require_reviewed(allow_unreviewed=False)
    assert "set each column's `needs_review` to `false`" in SCHEMA_DOC and "remove the marks" not in SCHEMA_DOC

"""The embedded demo table (see SOURCE.md) and its reviewed public schema."""

from importlib.resources import files
from pathlib import Path


def demo_data_path() -> Path:
    return Path(str(files(__name__).joinpath("flchain.csv")))


def demo_schema_path() -> Path:
    return Path(str(files(__name__).joinpath("flchain.schema.json")))

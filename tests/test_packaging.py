"""A non-editable wheel installs under the single import name `fedsyn` and works, and ships the
library only: the benchmark scripts (benchmarks/) and the tests stay in the checkout."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _clean_copy(target: Path) -> Path:
    """The checkout's files as git sees them (tracked, or new and not ignored), without build/:
    setuptools packs whatever an earlier build left in build/lib, even modules since removed."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    return target


def test_wheel_installs_only_the_fedsyn_package(tmp_path):
    source = _clean_copy(tmp_path / "source")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"),
                    str(source)], check=True)
    wheel = next((tmp_path / "dist").glob("fedsyn-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"fedsyn", f"fedsyn-{wheel.name.split('-')[1]}.dist-info"}
    assert not [name for name in names if Path(name).name.startswith("bench")], "benchmark scripts in the wheel"
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                    str(wheel)], check=True)
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import importlib.util as u;"
        "import fedsyn.model.gan, fedsyn.client.app, fedsyn.server.app, fedsyn.simulations.run, fedsyn.cli.main;"
        "from fedsyn.data.demo import demo_data_path;"
        "assert fedsyn.model.gan.__file__.startswith(sys.argv[1]), fedsyn.model.gan.__file__;"
        "assert demo_data_path().is_file();"
        "assert all(u.find_spec(n) is None for n in ('common', 'server', 'client'))"
    )
    subprocess.run([sys.executable, "-I", "-c", probe, str(target)], check=True, cwd=tmp_path)

"""A non-editable wheel installs under the single import name `fedsyn` and works."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_only_the_fedsyn_package(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"),
                    str(ROOT)], check=True)
    wheel = next((tmp_path / "dist").glob("fedsyn-*.whl"))
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert tops == {"fedsyn", f"fedsyn-{wheel.name.split('-')[1]}.dist-info"}
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

"""The wheel installs models/ and guides/ inside the package, never as top-level packages."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from conftest import REPO


def test_wheel_layout_and_import_from_the_installed_wheel(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist")], check=True, cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("monteclora_pyro-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"monteclora_pyro"}, top_level
    assert "monteclora_pyro/models/monteclora.toml" in names
    assert "monteclora_pyro/guides/monteclora.py" in names
    assert "monteclora_pyro/py.typed" in names

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True)
    probe = (
        "import monteclora_pyro, monteclora_pyro.guides as g;"
        "from monteclora_pyro import load_prior, available_priors;"
        "print(monteclora_pyro.__file__); print(sorted(available_priors())); print(sorted(g.GUIDES));"
        "print(load_prior('monteclora').df)"
    )
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}).stdout.splitlines()
    assert out[0].startswith(str(site))
    declared = sorted(path.stem for path in (REPO / "models").glob("*.toml"))  # every one is packaged
    assert out[1:] == [str(declared), "['delta', 'laplace', 'mean_field', 'monteclora']", "10.0"]

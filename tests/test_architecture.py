"""The layout's rules, read from the source: no import circle, imports point down the layers, entry
points stay thin and loss files stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "avdm"
# Top-level modules that are not command-line entry points: the layer everything may use.
SHARED = {
    "avdm", "avdm.config", "avdm.config_schema", "avdm.errors", "avdm.hydra_entry", "avdm.cli", "avdm.moved",
}  # fmt: skip
# Higher number = higher layer; a module may import its own layer or lower ones only.
LAYERS = {"entries": 3, "training": 2, "losses": 1, "models": 0, "data": 0, "metrics": 0}


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


def test_a_run_config_saved_before_the_module_node_loads_as_a_distillation_run(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from avdm.training.checkpoints import load_run_config

    hydra_dir = tmp_path / "run" / ".hydra"
    hydra_dir.mkdir(parents=True)
    OmegaConf.save(
        {"module": {"critic_lr": 3.0e-5}, "autoencoder": None, "seed": 0}, hydra_dir / "config.yaml"
    )
    cfg = load_run_config(hydra_dir / "config.yaml")
    assert cfg.module._target_ == "avdm.training.module.DistillationModule"
    assert cfg.module.critic_lr == 3.0e-5 and "autoencoder" not in cfg
    assert cfg.paths.output_dir == str(tmp_path / "run")


@pytest.mark.parametrize(
    ("old", "new"),
    [("avdm.module", "avdm.training.module"), ("avdm.checkpoints", "avdm.training.checkpoints"),
     ("avdm.visualize", "avdm.data.visualize"), ("avdm.models.teacher_sampling", "avdm.models.sampling")],
)  # fmt: skip
def test_moved_module_names_still_import_with_a_deprecation_warning(old: str, new: str) -> None:
    import importlib
    import sys

    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
        moved = importlib.import_module(old)
    assert moved is importlib.import_module(new)
    assert not (PACKAGE.parent / (old.replace(".", "/") + ".py")).exists(), "no file left at the old path"

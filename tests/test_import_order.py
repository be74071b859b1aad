"""Imports run one way through the package, and no import cycle exists.

The order (DESIGN.md): random, utils -> schedules -> objectives -> samplers,
guidance, conditioning -> layers -> pipelines, export -> models, pretrained
-> metrics, callbacks (and data, testing) -> training. A module may import
its own level or below, never above; every import counts, the lazy ones
inside functions too, and cycles are looked for through packages'
`__init__.py` files as well.
"""

import ast
import os

import pytest

import keras_diffusion

ROOT = os.path.dirname(os.path.abspath(keras_diffusion.__file__))
LEVELS = {
    "random": 0,
    "utils": 0,
    "schedules": 1,
    "objectives": 2,
    "samplers": 3,
    "guidance": 3,
    "conditioning": 3,
    "layers": 4,
    "pipelines": 5,
    "export": 5,
    "models": 6,
    "pretrained": 6,
    "metrics": 7,
    "callbacks": 7,
    "data": 7,
    "testing": 7,
}


def _modules():
    """{dotted module name: path} of every module of the package."""
    out = {}
    for directory, _, files in os.walk(ROOT):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].split(os.sep)
            if rel[-1] == "__init__":
                rel = rel[:-1]
            out[".".join(rel)] = path
    return out


def _imports(path, modules):
    """The package modules that the file at `path` imports (all of them)."""
    tree = ast.parse(open(path).read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [
                f"{node.module}.{alias.name}"
                if f"{node.module}.{alias.name}" in modules
                else node.module
                for alias in node.names
            ]
        else:
            continue
        for name in names:
            if name == "keras_diffusion" or name.startswith("keras_diffusion."):
                while name not in modules and "." in name:
                    name = name.rsplit(".", 1)[0]
                found.add(name)
            elif name == "training" or name.startswith("training."):
                found.add(name)
    return found


def _graph():
    modules = _modules()
    return {name: _imports(path, modules) for name, path in modules.items()}


def _level(module):
    parts = module.split(".")
    if len(parts) == 1:
        return None  # The package's own __init__: the facade.
    if parts[1] not in LEVELS:
        raise AssertionError(f"{module}: its subpackage has no level in LEVELS")
    return LEVELS[parts[1]]


@pytest.mark.jax
def test_imports_follow_the_order():
    bad = []
    for module, imports in sorted(_graph().items()):
        level = _level(module)
        for target in sorted(imports):
            if target.split(".")[0] == "training":
                bad.append(f"{module} imports {target} (training/ is above the package)")
                continue
            if level is None:
                continue
            if target == "keras_diffusion":
                bad.append(f"{module} imports the top-level package (import its parts)")
                continue
            if _level(target) > level:
                bad.append(
                    f"{module} (level {level}) imports {target} (level {_level(target)})"
                )
    assert not bad, "Imports against the order:\n" + "\n".join(bad)


@pytest.mark.jax
def test_no_import_cycles():
    graph = _graph()
    # A module importing `pkg.sub.mod` runs `pkg.sub`'s __init__ first.
    for module in list(graph):
        extra = set()
        for target in graph[module]:
            parts = target.split(".")
            for i in range(2, len(parts)):
                parent = ".".join(parts[:i])
                if parent in graph and not module.startswith(parent + ".") and module != parent:
                    extra.add(parent)
        graph[module] = set(graph[module]) | extra
    graph.pop("keras_diffusion", None)
    for module in graph:
        graph[module].discard("keras_diffusion")
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "Import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_check_sees_a_violation(tmp_path):
    """The checker itself: an upward import is reported."""
    path = tmp_path / "mod.py"
    path.write_text("def f():\n    from keras_diffusion.models import unet\n")
    modules = _modules()
    found = _imports(str(path), modules)
    assert "keras_diffusion.models.unet" in found
    assert _level("keras_diffusion.models.unet") > _level("keras_diffusion.samplers.sampler")

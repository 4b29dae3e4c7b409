"""The package's layers: every import, function-level ones included, runs down (or within) the layers, and no
two modules import each other, directly or through others.

    core < data < models < methods < evaluation < engine < viz < studies < lessons < cli

`core` holds files and caches; `data` the world and folder datasets; `models` the CLIP loader and the model
state of both towers; `methods` the parts and their registry; `evaluation` features, OOD scores, zero-shot and
the CLIP card; `engine` the experiment spec, its builder, training, scoring and run folders; `viz` figures and
widgets; `studies` the bench, sweeps and projections; `lessons` what the notebooks call; `cli` the command line.
The package's own `__init__` is the public facade and may import any layer; no module imports it.
"""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "clipood_kit"
LAYERS = ["core", "data", "models", "methods", "evaluation", "engine", "viz", "studies", "lessons", "cli"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (PKG.parent / rel).with_suffix(".py").is_file() or (PKG.parent / rel / "__init__.py").is_file()


def imports_of(path: Path):
    """(line, imported module) for every import in the file, wherever it sits; `from P import m` counts as the
    module P.m when m is a module."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield node.lineno, sub if is_module(sub) else target


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def package_files():
    return [p for p in PKG.rglob("*.py") if p != PKG / "__init__.py"]


def test_every_module_sits_in_a_layer():
    stray = [module_name(p) for p in package_files() if layer(module_name(p)) not in LAYERS]
    assert not stray, f"modules outside the layers {LAYERS}: {stray}"


@pytest.mark.parametrize("path", package_files(), ids=lambda p: module_name(p))
def test_imports_run_down_the_layers(path):
    here = LAYERS.index(layer(module_name(path)))
    upward = []
    for line, target in imports_of(path):
        if target == "clipood_kit":
            upward.append(f"line {line}: imports the package facade clipood_kit (import from its layer instead)")
        elif target.startswith("clipood_kit.") and LAYERS.index(layer(target)) > here:
            upward.append(f"line {line}: {target} ({layer(target)} is above {LAYERS[here]})")
    assert not upward, f"{module_name(path)} imports up the layers:\n" + "\n".join(upward)


def test_no_import_cycles():
    graph = {module_name(p): {t for _, t in imports_of(p) if t.startswith("clipood_kit.")} for p in package_files()}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in graph.get(m, ()):
            if state.get(t) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in graph:
        if m not in state:
            visit(m)


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    """The checker itself: an upward import inside a function, written relatively, is found."""
    fake = PKG / "methods" / "_layer_probe.py"
    fake.write_text("def f():\n    from ..engine import scoring\n    return scoring\n")
    try:
        found = list(imports_of(fake))
    finally:
        fake.unlink()
    assert found == [(2, "clipood_kit.engine.scoring")]


def test_no_untyped_parameter_stands_in_for_a_class_of_the_package():
    """A parameter named after one of the package's classes (`setup` for engine.experiment.Setup) carries a type.
    Left untyped, it hides a dependency the import graph cannot see: encoding.py took `setup` untyped because
    importing Setup would close a loop (experiment imports encoding), so the layers test passed while the code
    depended on a module above it. Such a function types what it needs (a Protocol in its own module)."""
    classes = {}
    trees = {path: ast.parse(path.read_text()) for path in package_files()}
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                classes.setdefault(node.name.lower(), f"{module_name(path)}.{node.name}")
    untyped = []
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for arg in node.args.posonlyargs + node.args.args + node.args.kwonlyargs:
                    if arg.arg not in ("self", "cls") and arg.annotation is None and arg.arg in classes:
                        untyped.append(f"{module_name(path)}.{node.name}({arg.arg}): stands in for {classes[arg.arg]}")
    assert not untyped, "untyped parameters named after the package's classes:\n" + "\n".join(untyped)

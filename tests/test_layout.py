"""The package's shape, read from its source with `ast` (no seglab module is imported, no TensorFlow):
layers without an import circle, short functions, few modules at the top of the package."""

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "seglab"
MAX_FUNCTION_LINES = 60
MAX_TOP_MODULES = 14  # the command shims, the entry point and the small shared modules; the rest lives in layers


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(node: ast.AST, importer: str, is_package: bool, modules: set[str]) -> set[str]:
    """The seglab modules one import statement loads: `from seglab.x import y` names the module
    seglab.x.y if there is one, else seglab.x (a package being its __init__)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in modules}
    base = node.module or ""
    if node.level:  # relative: from the importer's package upwards
        package = importer.split(".") if is_package else importer.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
    targets = {f"{base}.{alias.name}" for alias in node.names} & modules
    named_only_modules = len(targets) == len(node.names)
    return targets | ({base} if base in modules and not named_only_modules else set())


def import_graph() -> dict[str, set[str]]:
    """module -> the seglab modules it imports anywhere in its body, function-local imports included."""
    files = sources()
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[name] = set().union(
            *(imported(node, name, path.name == "__init__.py", set(files)) for node in ast.walk(tree)
              if isinstance(node, (ast.Import, ast.ImportFrom)))
        ) - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle (a -> ... -> a) per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(circle_through(graph, set(component)))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def circle_through(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside the component."""
    start = min(component)
    paths, seen = [[start]], set()
    while paths:
        path = paths.pop(0)
        for nxt in sorted(graph[path[-1]] & component):
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                paths.append([*path, nxt])
    raise AssertionError(f"no circle in {component}")


def test_the_graph_sees_function_local_imports_and_modules_named_in_from_imports():
    graph = import_graph()
    assert "seglab.inference" in graph["seglab.tracking.served"]  # imported inside ImageSegmenter.predict
    assert {"seglab.console", "seglab.errors"} <= graph["seglab.cli.predict"]  # `from seglab import console, errors`
    assert "seglab.tracking" in graph["seglab.cli.predict"]  # `from seglab import tracking`: the package's __init__
    assert "seglab.config.schema" in graph["seglab.cli.train"]  # `from seglab.config.schema import CONF_DIR`


def test_the_circle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({**graph, "c": {"d"}}) == []


def test_no_import_circle_among_seglabs_modules():
    found = cycles(import_graph())
    assert not found, "import circles (function-local imports count):\n" + "\n".join(" -> ".join(c) for c in found)


def test_no_function_is_longer_than_60_lines():
    long = []
    for name, path in sources().items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: " + "; ".join(long)


def test_few_modules_directly_in_seglab():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_MODULES, f"{len(top)} modules directly in seglab/ (at most {MAX_TOP_MODULES}): {', '.join(top)}"


# What a function-local import may load: the libraries that take seconds (TensorFlow, Keras, MLflow,
# tensorflow-datasets), or a seglab module that loads one of them when imported.
# keras_hub imports TensorFlow; onnxruntime and ai_edge_litert are the optional `export` extra, imported only for their
# format; submitit: SLURM sweeps only; optuna: optuna sweeps only.
HEAVY = ("tensorflow", "keras", "mlflow", "tensorflow_datasets", "keras_hub", "onnxruntime", "ai_edge_litert", "submitit",
         "optuna")
LAZY_NOTE = "# Lazy imports:"  # the one line a module with function-local imports says why


def local_imports(tree: ast.AST):
    for function in ast.walk(tree):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(function):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    yield node


def loads_heavy(module: str, files: dict[str, Path], seen: set[str] | None = None) -> bool:
    """Whether importing `module` (its module-level imports, followed through seglab) loads a heavy library."""
    if module.split(".")[0] in HEAVY:
        return True
    if module not in files:
        return False
    seen = seen if seen is not None else set()
    if module in seen:
        return False
    seen.add(module)
    parents = [".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)]
    tree = ast.parse(files[module].read_text())
    top = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    names = set(parents)
    for node in top:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        else:
            names |= {node.module or ""} | {f"{node.module}.{alias.name}" for alias in node.names}
    return any(loads_heavy(name, files, seen) for name in names if name != module)


def test_function_local_imports_only_keep_heavy_libraries_off_a_fast_path_and_say_so():
    files = sources()
    wrong, unexplained = [], []
    for name, path in files.items():
        text = path.read_text()
        found = list(local_imports(ast.parse(text)))
        for node in found:
            modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module]
            if not any(loads_heavy(module, files) or any(loads_heavy(f"{module}.{a.name}", files) for a in node.names)
                       for module in modules):
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
        if found and LAZY_NOTE not in text:
            unexplained.append(str(path.relative_to(ROOT)))
    assert not wrong, "function-local imports of light modules (import them at the top):\n" + "\n".join(wrong)
    assert not unexplained, f"modules with function-local imports but no {LAZY_NOTE!r} line saying why:\n" + "\n".join(unexplained)


# The layers, top down (README, "Where things are"). A module imports only from its own layer or below. The
# command names (`python -m seglab.<command>`: seglab/<command>.py and the packages' __main__.py) are two-line
# entry points into seglab/cli/, above every layer. models/facts.py is the TensorFlow-free knowledge of the
# architectures that the schema checks with, so it sits with the schema.
LAYERS = (
    ("entry points", lambda m: m.endswith(".__main__") or m.count(".") == 1 and m.split(".")[1] in ENTRY_POINTS),
    ("cli", lambda m: m.startswith("seglab.cli.")),
    ("engine", lambda m: m.startswith("seglab.engine.")),
    ("models, data, tracking and the ML parts",
     lambda m: m.split(".")[1] in ("models", "data", "tracking", "losses", "metrics", "inference", "schedules")
     and m != "seglab.models.facts"),
    ("config", lambda m: m.startswith("seglab.config.") or m == "seglab.models.facts"),
    ("helpers", lambda m: True),
)
ENTRY_POINTS = ("evaluate", "predict", "report", "bench", "check_determinism", "export")


def layer(module: str) -> int:
    if module == "seglab":  # the package's __init__: the version, nothing else
        return len(LAYERS) - 1
    return next(i for i, (_, member) in enumerate(LAYERS) if member(module))


def test_no_import_climbs_back_up_a_layer():
    graph = import_graph()
    climbs = [f"{a} ({LAYERS[layer(a)][0]}) -> {b} ({LAYERS[layer(b)][0]})"
              for a, targets in sorted(graph.items()) for b in sorted(targets) if layer(b) < layer(a)]
    assert not climbs, "imports that climb back up a layer:\n" + "\n".join(climbs)

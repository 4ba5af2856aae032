"""The package's structure, read from its source with ``ast`` (nothing is imported):
no import cycle between nnlab modules, no library module importing the command line
(``nnlab.cli``), ``__all__`` in every public module (one whose dotted name has no part
starting with an underscore) naming only what the module has, no module over
``MAX_LINES`` lines, and no autograd in the modules whose backward passes are hand-written."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 900  # a module longer than this holds more than one responsibility: split it
# Autograd is only the judge: the layers, optimizers and schedulers never touch it.
HAND_WRITTEN = ("nnlab.layers", "nnlab.optimizers", "nnlab.schedulers")
AUTOGRAD_ATTRIBUTES = {"requires_grad", "requires_grad_", "detach", "detach_", "data", "grad_fn", "retain_grad", "autograd"}


def read_package(root=ROOT, package="nnlab"):
    """{module name: parsed source} of every module of the package under ``root``,
    with the names of its packages (folders with an ``__init__.py``)."""
    modules, packages = {}, set()
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
            packages.add(".".join(parts))
        modules[".".join(parts)] = ast.parse(path.read_text(), str(path))
    return modules, packages


def imports_of(name, tree, modules, packages):
    """The package's modules that ``name`` imports anywhere in its source (an import
    inside a function closes a cycle all the same). ``from x import y`` imports the
    module ``x.y`` when there is one, else ``x``. Importing ``a.b`` also runs the
    ``__init__`` of ``a``, but a package may re-export its own children, so that is
    not counted as an edge to ``a``."""
    package = name if name in packages else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + [base] if base else anchor)
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.add(child if child in modules else base)
    return {module for module in found if module in modules and module != name}


def import_graph(modules, packages):
    return {name: imports_of(name, tree, modules, packages) for name, tree in modules.items()}


def find_cycle(graph):
    """One import cycle as a list of modules whose first is repeated at the end, or None."""
    done, path = set(), []

    def visit(node):
        path.append(node)
        for target in sorted(graph[node]):
            if target in path:
                return path[path.index(target) :] + [target]
            if target not in done:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def is_command_line(name):
    return name == "nnlab.cli" or name.startswith("nnlab.cli.") or name == "nnlab.__main__"


def command_line_importers(graph):
    """{library module: the command-line modules it imports}."""
    found = {name: sorted(filter(is_command_line, targets)) for name, targets in graph.items() if not is_command_line(name)}
    return {name: targets for name, targets in found.items() if targets}


def without_all(modules):
    """The public modules that do not assign ``__all__`` at their top level."""
    missing = []
    for name, tree in modules.items():
        if any(part.startswith("_") for part in name.split(".")):
            continue
        assigned = {target.id for node in tree.body if isinstance(node, ast.Assign) for target in node.targets if isinstance(target, ast.Name)}
        if "__all__" not in assigned:
            missing.append(name)
    return missing


def undefined_in_all(modules):
    """{module: the names its ``__all__`` lists but it neither defines nor imports}; a
    module with a ``__getattr__`` provides names on demand and is left out."""
    found = {}
    for name, tree in modules.items():
        listed, bound = [], set()
        if any(isinstance(node, ast.FunctionDef) and node.name == "__getattr__" for node in tree.body):
            continue
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                bound.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                bound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        bound.add(target.id)
                        if target.id == "__all__":
                            listed = [element.value for element in node.value.elts]
        missing = [entry for entry in listed if entry not in bound]
        if missing:
            found[name] = missing
    return found


def autograd_uses(modules):
    """{module: sorted autograd attributes it reads} for the hand-written modules."""
    found = {}
    for name, tree in modules.items():
        if not any(name == prefix or name.startswith(prefix + ".") for prefix in HAND_WRITTEN):
            continue
        used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)} & AUTOGRAD_ATTRIBUTES
        if used:
            found[name] = sorted(used)
    return found


MODULES, PACKAGES = read_package()
GRAPH = import_graph(MODULES, PACKAGES)


def test_no_import_cycles():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_library_module_imports_the_command_line():
    assert command_line_importers(GRAPH) == {}


def test_every_public_module_declares_all():
    assert without_all(MODULES) == []


def test_every_name_in_all_exists():
    assert undefined_in_all(MODULES) == {}


def test_no_module_is_over_max_lines():
    lengths = {path.relative_to(ROOT).as_posix(): len(path.read_text().splitlines()) for path in (ROOT / "nnlab").rglob("*.py")}
    assert {path: length for path, length in lengths.items() if length > MAX_LINES} == {}


def test_no_autograd_in_hand_written_modules():
    assert autograd_uses(MODULES) == {}


def fake_package(tmp_path, files):
    for relative, text in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return read_package(tmp_path, "pkg")


def test_the_checks_fail_where_they_must(tmp_path):
    """A cycle through a function-level import and a relative import from a sibling
    package, a library module that imports the command line, a public module without
    __all__: each is found."""
    modules, packages = fake_package(
        tmp_path,
        {
            "pkg/__init__.py": "__all__ = []\n",
            "pkg/a.py": "__all__ = []\ndef f():\n    from .sub import b\n",
            "pkg/sub/__init__.py": "from .b import x\n__all__ = ['x']\n",
            "pkg/sub/b.py": "from ..a import f\nx = 1\n",
            "pkg/_private.py": "import pkg.cli\n",
            "pkg/cli/__init__.py": "__all__ = ['gone']\n",
            "pkg/layers/__init__.py": "__all__ = []\nn = [p for p in m.parameters() if p.requires_grad]\n",
        },
    )
    graph = import_graph(modules, packages)
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    assert find_cycle({name: targets - {"pkg.sub.b"} for name, targets in graph.items()}) is None
    assert without_all(modules) == ["pkg.sub.b"]
    assert undefined_in_all(modules) == {"pkg.cli": ["gone"]}
    assert {name: targets for name, targets in graph.items() if "pkg.cli" in targets} == {"pkg._private": {"pkg.cli"}}
    assert autograd_uses({name.replace("pkg", "nnlab", 1): tree for name, tree in modules.items()}) == {
        "nnlab.layers": ["requires_grad"]
    }

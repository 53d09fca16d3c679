"""The structure the README promises: no import circles, imports at module top, flags only
in commands, dp/ independent of gan/, no module importing another module's private names."""
import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tfdpgan")
COMMANDS = {"train", "export", "sample", "privacy", "evaluate", "sweep", "audit", "phantom",
            "convert", "fid"}
LAZY_OK = {"matplotlib", "sklearn", "tensorflow_hub"}   # optional heavy packages


def _modules():
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
                yield rel.removesuffix(".__init__"), path


MODULES = dict(_modules())


def _tree(name):
    with open(MODULES[name]) as f:
        return ast.parse(f.read())


def _imported(name, node):
    """tfdpgan modules named by one import statement in module ``name``."""
    out = []
    if isinstance(node, ast.Import):
        out = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
        base = node.module
        if node.level:
            base = ".".join(name.split(".")[:-node.level] + [node.module])
        out = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
               for a in node.names]
    return [m for m in out if m in MODULES and m != "tfdpgan"]


def _graph():
    return {name: {m for node in ast.walk(_tree(name)) for m in _imported(name, node)}
            for name in MODULES}


def test_no_import_circles():
    graph, state, cycles = _graph(), {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_dp_knows_nothing_of_gan_and_libraries_import_no_command():
    commands = {f"tfdpgan.{c}" for c in COMMANDS}
    for name, imports in _graph().items():
        if name.startswith("tfdpgan.dp"):
            assert not any(m.startswith("tfdpgan.gan") for m in imports), name
        if name not in commands and name != "tfdpgan.cli":
            assert not imports & commands, (name, imports & commands)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_at_module_top_and_flags_only_in_commands(name):
    tree = _tree(name)
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
            if isinstance(node, ast.ImportFrom):
                roots = {(node.module or "").split(".")[0]}
            else:
                roots = {a.name.split(".")[0] for a in node.names}
            assert roots <= LAZY_OK, (name, node.lineno, ast.unparse(node))
    is_command = name.split(".")[-1] in COMMANDS and name.count(".") == 1
    if not is_command and name != "tfdpgan.cli":
        text = ast.unparse(tree)
        assert "DEFINE_" not in text and "flags.FLAGS" not in text, name


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_private_names_imported_across_modules(name):
    for node in ast.walk(_tree(name)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
                "tfdpgan"):
            private = [a.name for a in node.names if a.name.startswith("_")]
            assert not private, (name, private)

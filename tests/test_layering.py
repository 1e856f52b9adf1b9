"""Imports follow the layering docs/architecture.md states: every import of every module
(module level and inside functions) goes to the same layer or an earlier one, and no
modules import each other round a circle. The layers are read from the doc itself."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / "hf_px"
DOC = REPO_ROOT / "docs" / "architecture.md"
_LAYER_LINE = re.compile(r"\s*(\d+)\.\s+([\w, ]+?)\s*")


def documented_layers() -> dict[str, int]:
    """{top-level name: layer number} from the doc's first fenced block made only of
    numbered lines."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", DOC.read_text(), re.M | re.S)
    for block in blocks:
        lines = [line for line in block.splitlines() if line.strip()]
        matches = [_LAYER_LINE.fullmatch(line) for line in lines]
        if lines and all(matches):
            return {
                name.strip(): int(m.group(1)) for m in matches for name in m.group(2).split(",")
            }
    raise AssertionError(f"{DOC.name} states no layer list (a fenced block of 'N. names')")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(dotted: str) -> bool:
    """A Python file, a package, or a compiled extension (its C source or built file)."""
    path = REPO_ROOT.joinpath(*dotted.split("."))
    if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
        return True
    return path.parent.is_dir() and any(path.parent.glob(path.name + ".*"))


def imports_of(path: Path) -> set[str]:
    """The hf_px modules `path` imports, anywhere in the file; `from pkg import name`
    counts as importing ``pkg.name`` when that is a module, else ``pkg``."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                found.add(sub if is_module(sub) else source)
    return {m for m in found if m == "hf_px" or m.startswith("hf_px.")} - {name}


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str, layers: dict[str, int]) -> int:
    key = "hf_px" if module == "hf_px" else module.split(".")[1]
    assert key in layers, f"{module} is in no layer of {DOC.name}; add {key!r} to its list"
    return layers[key]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_doc_places_every_module():
    layers = documented_layers()
    for module in import_graph():
        layer_of(module, layers)


def test_no_import_goes_up_the_layering():
    layers = documented_layers()
    upward = [
        f"{m} (layer {layer_of(m, layers)}) imports {d} (layer {layer_of(d, layers)})"
        for m, deps in import_graph().items()
        for d in sorted(deps)
        if layer_of(d, layers) > layer_of(m, layers)
    ]
    assert upward == []


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_checker_reads_what_it_must():
    # the checks above pass only if they can fail: an import inside a function is read
    # (cli/structured.py imports checkpoint.structured only there), so is a compiled
    # extension, and a circle is found
    assert "hf_px.checkpoint.structured" in imports_of(PACKAGE / "cli" / "structured.py")
    assert "hf_px.checkpoint._bitmask_ext" in imports_of(PACKAGE / "checkpoint" / "bitmask.py")
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


#: a function longer than this says why in its docstring ("... on purpose: ...")
LONG_FUNCTION = 80


def test_a_long_function_says_why_it_is_long():
    unexplained = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > LONG_FUNCTION and "on purpose" not in (ast.get_docstring(node) or ""):
                    unexplained.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.name}")
    assert unexplained == []

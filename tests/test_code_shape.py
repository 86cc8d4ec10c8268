"""The shape of the code a newcomer reads: short functions with few parameters (configuration
travels as typed objects), modules of one job (at most 500 lines), one definition per public name,
imports at the top of files (the few inside functions say why), one few-shot path, a pretraining
loop that fits on a screen, and MLflow behind ``pipeline/tracking/`` only."""
import ast
from pathlib import Path

import pytest

PIPELINE = Path(__file__).resolve().parents[1] / "pipeline"
MAX_LINES, MAX_PARAMS, MAX_LOOP_LINES = 80, 8, 60
MAX_MODULE_LINES, MAX_INNER_IMPORTS = 500, 10
CLI_NAMES = {"main", "build_parser"}   # every command's own


def functions() -> list[tuple[str, ast.FunctionDef]]:
    found = []
    for path in sorted(PIPELINE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append((f"{path.relative_to(PIPELINE.parent)}:{node.lineno} {node.name}", node))
    return found


def lines(node: ast.FunctionDef) -> int:
    return node.end_lineno - node.lineno + 1


def params(node: ast.FunctionDef) -> int:
    """Parameters a caller can pass (``*args`` and ``**kwargs`` count one each; ``self``/``cls`` none)."""
    a = node.args
    names = [*a.posonlyargs, *a.args]
    bound = 1 if names and names[0].arg in ("self", "cls") else 0
    return len(names) - bound + len(a.kwonlyargs) + (a.vararg is not None) + (a.kwarg is not None)


def test_the_rules_measure_what_they_say():
    tree = ast.parse("def f(self, a, b=1, *c, d, **e):\n    x = 1\n    return x\n")
    node = tree.body[0]
    assert params(node) == 5 and lines(node) == 3


def test_no_function_over_80_lines_or_8_parameters():
    found = functions()
    assert len(found) > 300  # the walk sees the package
    long = [f"{name} ({lines(node)} lines)" for name, node in found if lines(node) > MAX_LINES]
    wide = [f"{name} ({params(node)} parameters)" for name, node in found if params(node) > MAX_PARAMS]
    assert not long and not wide, "split them, or pass a typed settings object: " + "; ".join(long + wide)


def test_the_pretraining_loop_fits_on_a_screen():
    loop = [node for name, node in functions() if name.startswith("pipeline/pretrain/loop.py") and node.name == "train_loop"]
    assert len(loop) == 1 and lines(loop[0]) <= MAX_LOOP_LINES


@pytest.mark.parametrize("path", sorted(p for p in PIPELINE.rglob("*.py") if p.relative_to(PIPELINE).parts[0] != "tracking"),
                         ids=lambda p: str(p.relative_to(PIPELINE)))
def test_only_tracking_touches_mlflow(path):
    tree = ast.parse(path.read_text())
    imports = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    imports += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert not [m for m in imports if m.split(".")[0] == "mlflow"], f"{path.name} imports mlflow"
    clients = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr == "client"
               and isinstance(node.value, ast.Name) and node.value.id == "tracking"]
    assert not clients, f"{path.name} uses tracking.client (an MLflow object) on lines {clients}"


def modules() -> list[Path]:
    return sorted(PIPELINE.rglob("*.py"))


def test_no_module_over_500_lines():
    long = [f"{p.relative_to(PIPELINE.parent)} ({n} lines)" for p in modules()
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert not long, "give each job its own module: " + "; ".join(long)


def test_no_public_name_defined_in_two_modules():
    where: dict[str, list[str]] = {}
    for p in modules():
        for node in ast.parse(p.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                where.setdefault(node.name, []).append(str(p.relative_to(PIPELINE.parent)))
    twice = {name: found for name, found in where.items() if len(found) > 1 and name not in CLI_NAMES}
    assert not twice, f"one definition per name: {twice}"


def inner_imports_of(text: str) -> list[tuple[int, str]]:
    """Project imports (pipeline, models) made inside functions of a module's source: (line, the line)."""
    lines, found = text.splitlines(), {}
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):   # a nested function's imports are met once per enclosing one: keyed by line
                names = ([sub.module or ""] if isinstance(sub, ast.ImportFrom) else
                         [a.name for a in sub.names] if isinstance(sub, ast.Import) else [])
                if any(n.split(".")[0] in ("pipeline", "models") for n in names):
                    found[sub.lineno] = lines[sub.lineno - 1]
    return sorted(found.items())


def inner_imports() -> list[tuple[str, int, str]]:
    """Every module's project imports inside functions: (file, line, the line)."""
    return [(str(p.relative_to(PIPELINE.parent)), n, line) for p in modules() for n, line in inner_imports_of(p.read_text())]


def test_imports_sit_at_the_top_of_files_unless_a_comment_says_why():
    found = inner_imports()
    assert len(found) <= MAX_INNER_IMPORTS, f"{len(found)} project imports inside functions: {found}"
    unexplained = [f"{f}:{n}" for f, n, line in found if "#" not in line]
    assert not unexplained, f"say why these imports are inside a function (a comment on the line): {unexplained}"


def test_the_inner_import_finder_finds_what_it_should():
    source = ("import os\nfrom pipeline import tracking\n\ndef f():\n    import json\n"
              "    from pipeline.data import DataError  # why\n    import models.vit\n"
              "    def g():\n        from pipeline import spec\n")
    assert inner_imports_of(source) == [(6, "    from pipeline.data import DataError  # why"),
                                        (7, "    import models.vit"), (9, "        from pipeline import spec")]


def test_one_few_shot_path():
    """The ridge solver is called by the few-shot evaluator only (pipeline/transfer/fewshot.py), which
    both the transfer stage and the learning-curve probes run."""
    callers = set()
    for p in modules():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if name == "fewshot_accuracy":
                    callers.add(str(p.relative_to(PIPELINE.parent)))
    assert callers == {"pipeline/transfer/fewshot.py"}

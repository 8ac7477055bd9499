"""The package's layout holds: no import cycles between its modules, the model side (`modeling/`, `models/`) never
imports the training side, and private transformers / accelerate APIs are used only in `hf_internals` modules.

Imports are read from the sources with `ast`, function-level imports included: an import moved into a function body
hides a cycle from the interpreter, not from this test. Imports under `if TYPE_CHECKING:` are left out: they never
run (annotations only).
"""

from __future__ import annotations

import ast
from pathlib import Path

import trgl_hf

PACKAGE = "trgl_hf"
ROOT = Path(trgl_hf.__file__).parent
MODEL_SIDE = ("modeling", "models")
"""Sub-packages whose modules a saved model's remote code carries (see `trgl_hf.modeling.remote_code`)."""


def package_modules() -> dict[str, tuple[Path, bool]]:
    """`{dotted name: (file, is_package)}` of every module of trgl_hf."""
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if "__pycache__" in parts:
            continue
        is_package = parts[-1] == "__init__"
        modules[".".join((PACKAGE, *(parts[:-1] if is_package else parts)))] = (path, is_package)
    return modules


def imported_modules(name: str, path: Path, is_package: bool, modules: dict) -> set[str]:
    """The trgl_hf modules that importing `name` may import (anywhere in its source), with the packages initialised on
    the way, except its own ancestors (already being initialised) and the top-level package."""
    package = name.split(".") if is_package else name.split(".")[:-1]
    targets: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    guarded = [node for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node.test)]
    annotations_only = {id(inner) for node in guarded for statement in node.body for inner in ast.walk(statement)}
    for node in ast.walk(tree):
        if id(node) in annotations_only:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            elif (node.module or "").split(".")[0] == PACKAGE:
                base = node.module.split(".")
            else:
                continue
            found = [".".join(base)] + [".".join([*base, alias.name]) for alias in node.names]
        elif isinstance(node, ast.Import):
            found = [alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE]
        else:
            continue
        for target in found:
            parts = target.split(".")
            targets |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)}
    ancestors = {".".join(name.split(".")[:i]) for i in range(1, len(name.split(".")))}
    return {target for target in targets if target in modules and target not in ancestors and target != name}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imported_modules(name, path, is_package, modules) for name, (path, is_package) in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan), as a readable path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_the_walker_sees_function_level_imports_and_finds_a_cycle(tmp_path):
    source = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import h\ndef f():\n    from .b import g\n"
    )
    path = tmp_path / "a.py"
    path.write_text(source)
    modules = {"trgl_hf.x.a": (path, False), "trgl_hf.x.b": (path, False), "trgl_hf.x.c": (path, False),
               "trgl_hf.x": (path, True)}  # fmt: skip
    assert imported_modules("trgl_hf.x.a", path, False, modules) == {"trgl_hf.x.b"}
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles between trgl_hf modules (a function-level import hides them at run time): " + (
        "; ".join(" <-> ".join(cycle) for cycle in cycles)
    )


def test_the_model_side_imports_nothing_of_the_training_side():
    """`modeling/` and `models/` (what a saved model's remote code carries) import only each other."""
    outside = {}
    for name, targets in import_graph().items():
        if name.split(".")[1:2] and name.split(".")[1] in MODEL_SIDE:
            wrong = sorted(t for t in targets if t.split(".")[1] not in MODEL_SIDE)
            if wrong:
                outside[name] = wrong
    assert not outside, f"model-side modules import training-side modules: {outside}"


# ---------------------------------------------------------------------------------------------------- hf_internals

KNOWN_PRIVATE_ATTRIBUTES = {"_is_hf_initialized", "model_wrapped"}
"""Private transformers attributes that no class lists (set on instances, or internal despite their public name)."""
KNOWN_PRIVATE_NAMES = {"SubConfigSpec", "default_logdir"}
"""Names imported from transformers' internal modules that are not part of its public API."""
DOCUMENTED_HOOKS = {"_init_weights"}
"""Private-looking methods transformers documents for custom models to override."""


def private_transformers_names() -> set[str]:
    """Private attributes and methods of the transformers / accelerate classes trgl_hf builds on (set in their
    `__init__` or defined on them), except torch's and Python's own."""
    import torch
    from accelerate import Accelerator
    from transformers import PreTrainedConfig, PreTrainedModel, Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import TrainerControl, TrainerState

    names = set(KNOWN_PRIVATE_ATTRIBUTES)
    for cls in (Trainer, PreTrainedModel, PreTrainedConfig, TrainingArguments, TrainerCallback, TrainerState,
                TrainerControl, Accelerator):  # fmt: skip
        names |= {name for name in dir(cls) if name.startswith("_") and not name.startswith("__")}
        code = getattr(cls.__init__, "__code__", None)
        names |= {
            name for name in (code.co_names if code else ()) if name.startswith("_") and not name.startswith("__")
        }
    return names - set(dir(torch.nn.Module)) - set(dir(object)) - DOCUMENTED_HOOKS


def declared_overrides() -> set[str]:
    """The private methods `hf_internals` declares (and checks) as overridden."""
    from trgl_hf.modeling import hf_internals as model_internals
    from trgl_hf.training import hf_internals as training_internals

    return {*model_internals.OVERRIDDEN_MODEL_METHODS, *training_internals.OVERRIDDEN_TRAINER_METHODS}


def private_uses(tree: ast.AST, private: set[str], overrides: set[str]) -> list[tuple[int, str]]:
    """`(line, what)` of every private transformers API used in `tree`: a private attribute read or written, a private
    method defined (unless a declared override; its `super().<name>` call is then allowed), a private name imported."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in private - overrides:
            found.append((node.lineno, f"defines {node.name}"))
        elif isinstance(node, ast.Attribute) and node.attr in private:
            is_super = isinstance(node.value, ast.Call) and getattr(node.value.func, "id", None) == "super"
            if not (is_super and node.attr in overrides):
                found.append((node.lineno, f".{node.attr}"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("transformers", "accelerate"):
            found += [(node.lineno, f"imports {alias.name}") for alias in node.names
                      if alias.name.startswith("_") or alias.name in KNOWN_PRIVATE_NAMES]  # fmt: skip
    return found


def test_the_private_api_walker_finds_each_kind_of_use():
    source = (
        "from transformers.configuration_utils import SubConfigSpec\n"
        "class M:\n"
        "    def _save_checkpoint(self):\n"
        "        super()._save_checkpoint()\n"
        "        self._get_collator_with_removed_columns()\n"
        "    def _remove_unused_columns(self):\n"
        "        module._is_hf_initialized = True\n"
    )
    uses = private_uses(ast.parse(source), private_transformers_names(), {"_save_checkpoint"})
    assert {what for _, what in uses} == {"imports SubConfigSpec", "._get_collator_with_removed_columns",
                                          "defines _remove_unused_columns", "._is_hf_initialized"}  # fmt: skip


def test_private_transformers_apis_are_used_only_in_hf_internals():
    private, overrides = private_transformers_names(), declared_overrides()
    assert overrides <= private  # a declared override that is no private API any more is stale
    uses = {}
    for name, (path, _) in package_modules().items():
        if name.rsplit(".", 1)[-1] != "hf_internals":
            found = private_uses(ast.parse(path.read_text(encoding="utf-8")), private, overrides)
            if found:
                uses[name] = found
    assert not uses, (
        "private transformers / accelerate APIs used outside hf_internals (wrap them there, or declare an override "
        f"in its OVERRIDDEN_* lists): {uses}"
    )


# ---------------------------------------------------------------------------------------------------- sizes

MAX_FUNCTION_LINES = 60
"""From its `def` line to its last line, docstring included."""
MAX_TRAINER_LINES = 360
"""`training/trainer.py` orchestrates: the run, the phases and the Trainer hooks live in their own modules."""


def long_functions(tree: ast.AST, limit: int) -> list[tuple[int, str, int]]:
    """`(line, name, length)` of every function (methods and nested functions included) over `limit` lines."""
    return [(node.lineno, node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > limit]  # fmt: skip


def test_the_length_walker_counts_nested_functions():
    tree = ast.parse("def outer():\n    def inner():\n" + "        x = 1\n" * 5 + "    return inner\n")
    assert long_functions(tree, 6) == [(1, "outer", 8)]
    assert long_functions(tree, 5) == [(1, "outer", 8), (2, "inner", 6)]


def test_no_function_is_over_60_lines_and_the_trainer_stays_an_orchestrator():
    found = {}
    for name, (path, _) in package_modules().items():
        long = long_functions(ast.parse(path.read_text(encoding="utf-8")), MAX_FUNCTION_LINES)
        if long:
            found[name] = long
    assert not found, f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps): {found}"
    trainer_lines = len((ROOT / "training" / "trainer.py").read_text(encoding="utf-8").splitlines())
    assert trainer_lines <= MAX_TRAINER_LINES, f"training/trainer.py has {trainer_lines} lines: move a concern out"

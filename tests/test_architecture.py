"""The layers of `newsletter/`: imports point down only, and nothing imports in a circle.

Read from the source (every import, also those inside functions), not from what a run
happens to load, so a circle that only closes on a rare path is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "newsletter"

# Each part and the parts it may import. The ground floor (models, extensions, i18n, the
# leases, the digest schedule read from the settings) may be used by every part above the engine.
GROUND = {"models", "extensions", "i18n", "leases", "sqlite_tuning", "schedule"}
ALLOWED = {
    "engine": set(),
    "ground": {"engine"},
    "mail": {"engine", "ground"},
    "subscriptions": {"mail", "engine", "ground"},
    "admins": {"mail", "engine", "ground"},
    "digests": {"subscriptions", "mail", "engine", "ground"},
    "delivery": {"digests", "subscriptions", "admins", "mail", "engine", "ground"},
    "monitoring": {"delivery", "digests", "subscriptions", "admins", "mail", "engine", "ground"},
    "privacy": {"delivery", "digests", "subscriptions", "admins", "mail", "engine", "ground"},
    "inbound": {"delivery", "digests", "subscriptions", "admins", "mail", "engine", "ground"},
}
DOMAIN = set(ALLOWED) - {"engine", "ground"}
ENTRY = {"web", "cli", "scheduler", "tasks"}
FACTORY = {"app", "__init__"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The newsletter modules `path` imports: `from a.b import c` names a.b.c if that is a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("newsletter"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("newsletter"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in MODULES else node.module)
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: imports_of(path) for name, path in MODULES.items()}


def part_of(module: str) -> str:
    top = module.split(".")[1] if "." in module else "__init__"
    return "ground" if top in GROUND else top


def test_no_module_imports_in_a_circle():
    # A package's __init__ re-exporting its modules is the package's interface, not a
    # dependency of those modules on it: edges into a package's own __init__ from inside
    # the package are left out.
    def edges(module):
        for target in GRAPH[module]:
            inside = module.startswith(target + ".") and MODULES[target].name == "__init__.py"
            if target in MODULES and not inside:
                yield target

    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module):
        state[module] = 1
        stack.append(module)
        for target in edges(module):
            if state.get(target) == 1:
                cycle = stack[stack.index(target):] + [target]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(MODULES):
        if module not in state:
            visit(module)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if part_of(m) in ALLOWED))
def test_each_part_imports_only_the_layers_below_it(module):
    part = part_of(module)
    for target in GRAPH[module]:
        other = part_of(target)
        if other == part:
            continue
        assert other in ALLOWED[part], f"{module} ({part}) imports {target} ({other})"


def test_the_engine_imports_neither_flask_nor_sqlalchemy_nor_the_rest_of_the_service():
    for module, path in MODULES.items():
        if part_of(module) != "engine":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in {"flask", "flask_sqlalchemy", "sqlalchemy", "flask_babel"}, \
                    f"{module} imports {name}"
                if name.startswith("newsletter"):
                    assert name.startswith("newsletter.engine"), f"{module} imports {name}"


def test_only_the_factory_and_entry_points_import_the_entry_points():
    for module in MODULES:
        part = part_of(module)
        if part in ENTRY or part in FACTORY:
            continue
        for target in GRAPH[module]:
            assert part_of(target) not in ENTRY | FACTORY, f"{module} imports the entry point {target}"

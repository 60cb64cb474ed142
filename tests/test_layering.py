"""The layering docs/architecture.md states, checked on the source: `cmpc.data` never imports `cmpc.models` or
`cmpc.engine`; `cmpc.models` never imports `cmpc.data` or `cmpc.engine`; `cmpc.metrics` and `cmpc.crf` import
nothing of ours. Every import statement counts, also those inside functions (lazy imports) and relative ones."""

import ast
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGE = ROOT / "cmpc"

# (layer: a module or a package under cmpc/, prefixes of `cmpc` modules it must not import)
RULES = [
    ("cmpc.data", ("cmpc.models", "cmpc.engine")),
    ("cmpc.models", ("cmpc.data", "cmpc.engine")),
    ("cmpc.metrics", ("cmpc",)),
    ("cmpc.crf", ("cmpc",)),
]


def _module_name(path: Path) -> str:
    """``cmpc/data/refer.py`` -> ``cmpc.data.refer``; ``cmpc/data/__init__.py`` -> ``cmpc.data``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Absolute names of the modules ``source`` (the text of module ``module``) imports anywhere in it; for
    ``from X import a`` both ``X`` and ``X.a`` (``a`` may be a submodule). Relative imports are resolved."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


def _layer_files(layer: str) -> list[Path]:
    path = ROOT.joinpath(*layer.split("."))
    if path.is_dir():
        return sorted(path.rglob("*.py"))
    return [path.with_suffix(".py")]


def _violates(name: str, banned: tuple[str, ...]) -> bool:
    return any(name == b or name.startswith(b + ".") for b in banned)


@pytest.mark.parametrize("layer, banned", RULES, ids=[r[0] for r in RULES])
def test_layer_imports_only_what_architecture_allows(layer, banned):
    files = _layer_files(layer)
    assert files and all(f.is_file() for f in files), f"{layer} has no source under {PACKAGE}"
    bad = []
    for f in files:
        names = imported_modules(f.read_text(), _module_name(f), is_package=f.name == "__init__.py")
        bad += [f"{f.relative_to(ROOT)} imports {n}" for n in sorted(names) if _violates(n, banned)]
    assert not bad, "docs/architecture.md's layering is broken:\n" + "\n".join(bad)


def test_import_finder_sees_lazy_relative_and_from_imports():
    """The checker itself: each way of importing the engine from cmpc/data/x.py is caught."""
    cases = {
        "import cmpc.engine.trainer": "cmpc.engine.trainer",
        "from cmpc.engine import trainer": "cmpc.engine.trainer",
        "from cmpc import engine": "cmpc.engine",
        "from ..engine.trainer import train": "cmpc.engine.trainer",
        "from .. import engine": "cmpc.engine",
        "def f():\n    from ..engine import checkpoint\n": "cmpc.engine.checkpoint",
    }
    for source, expected in cases.items():
        names = imported_modules(source, "cmpc.data.x")
        assert expected in names, (source, names)
        assert _violates(expected, ("cmpc.engine",))
    # a package's own relative import resolves inside it; a lookalike name is no violation
    assert "cmpc.data.base" in imported_modules("from .base import X", "cmpc.data", is_package=True)
    assert not _violates("cmpc.engineering", ("cmpc.engine",))

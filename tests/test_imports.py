"""Import direction: imports point down only (../shared/architecture.md, "The shape").

Every module under scmm/ is parsed with ``ast`` (nothing is imported, so this runs in a blink
and cannot be fooled by lazy imports: an import inside a function, or under TYPE_CHECKING,
is an edge like any other). Relative imports are resolved to absolute module names, and every
edge is checked against ``FORBIDDEN``.
"""

import ast
import pathlib
from typing import Iterable, Mapping

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = "scmm"

# The ground floor: plain building blocks that everything else may use.
GROUND_FLOOR = (
    "scmm.io",
    "scmm.folder_lock",
    "scmm.quiet_import",
    "scmm.formats",
    "scmm.exit_codes",
    "scmm.datasets",
    "scmm.parameters",
    "scmm.precision",
    "scmm.precision_settings",
)
ABOVE_GROUND = (
    "scmm.ops",
    "scmm.uscale",
    "scmm.schemes",
    "scmm.layers",
    "scmm.models",
    "scmm.training",
    "scmm.experiments",
    "scmm.sweeps",
    "scmm.analysis",
    "scmm.pedal",
    "scmm.sample",
    "scmm.coord_check",
)
# What the model floors (op sets and unit-scaled ops, schemes, layers, models) must not reach.
_RUNS = ("scmm.training", "scmm.experiments", "scmm.sweeps", "scmm.analysis")

# Importer prefix -> module prefixes no module under it may import. A prefix covers the module
# of that name and everything inside it ("scmm.io" covers scmm.io, not scmm.iox). Add a rule by
# adding an entry.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    **{floor: ABOVE_GROUND for floor in GROUND_FLOOR},
    # Scale statistics are a tool experiments use, not the other way round.
    "scmm.analysis": ("scmm.experiments", "scmm.sweeps", "scmm.models", "scmm.training"),
    # Sweeps drive experiments; an experiment knows nothing of the sweep it is in.
    "scmm.experiments": ("scmm.sweeps",),
    # Op sets and the unit-scaled functional ops are the bottom of the model stack.
    "scmm.ops": ("scmm.schemes", "scmm.layers", "scmm.models", *_RUNS),
    "scmm.uscale": ("scmm.schemes", "scmm.layers", "scmm.models", *_RUNS),
    "scmm.schemes": ("scmm.layers", "scmm.models", *_RUNS),
    # Layers know their op set, never the model that holds them.
    "scmm.layers": ("scmm.models", *_RUNS),
    "scmm.models": _RUNS,
    # The trainer depends on a model protocol, not on the model class or its layers.
    "scmm.training": ("scmm.models", "scmm.layers", "scmm.experiments", "scmm.sweeps"),
    # Sampling reads experiments' run folders; a sweep is not its business.
    "scmm.sample": ("scmm.sweeps",),
    # The coordinate check builds and trains models like an experiment, outside any sweep.
    "scmm.coord_check": ("scmm.sweeps",),
}
# Sampling and the coordinate check are tools on top (like a command line): nothing else in
# scmm imports them, and neither imports the other.
TOOLS = ("scmm.sample", "scmm.coord_check")
for _owner in (*GROUND_FLOOR, *ABOVE_GROUND):
    FORBIDDEN[_owner] = (
        *FORBIDDEN.get(_owner, ()),
        *(tool for tool in TOOLS if tool != _owner),
    )


def covers(prefix: str, module: str) -> bool:
    """Whether ``module`` is ``prefix`` or inside it (on dotted-name boundaries)."""
    return module == prefix or module.startswith(prefix + ".")


def module_name(path: pathlib.Path, root: pathlib.Path = ROOT) -> str:
    """scmm/experiments/cli.py -> scmm.experiments.cli; scmm/sweeps/__init__.py -> scmm.sweeps."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool) -> set[str]:
    """Absolute names of everything ``source`` (the text of ``module``) imports.

    ``from X import name`` yields ``X.name`` (it may be a submodule, e.g. ``from .. import io``)
    and ``X`` itself; relative imports are resolved against ``module``'s package.
    """
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level > len(package):
                    raise ValueError(
                        f"{module}: 'from {'.' * node.level}{node.module or ''} import ...'"
                        f" goes above the top-level package"
                    )
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names if alias.name != "*")
    return found


def violations(
    edges: Mapping[str, Iterable[str]], rules: Mapping[str, Iterable[str]] = FORBIDDEN
) -> list[str]:
    """'importer -> imported (rule)' for every edge a rule forbids, sorted."""
    found = []
    for importer, imported in edges.items():
        for owner, forbidden in rules.items():
            if not covers(owner, importer):
                continue
            for target in imported:
                for prefix in forbidden:
                    if covers(prefix, target):
                        found.append(f"{importer} -> {target} (rule: {owner} !-> {prefix})")
    return sorted(set(found))


def package_edges(root: pathlib.Path = ROOT) -> dict[str, set[str]]:
    """Module name -> the scmm modules it imports, for every module under root/scmm."""
    edges = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        name = module_name(path, root)
        imported = imported_modules(
            path.read_text(encoding="utf-8"), name, path.name == "__init__.py"
        )
        edges[name] = {m for m in imported if covers(PACKAGE, m)}
    return edges


# The package itself ---------------------------------------------------------------------------


def test_imports_point_down_only() -> None:
    edges = package_edges()
    assert len(edges) > 40 and "scmm.io" in edges  # the walk really saw the package
    broken = violations(edges)
    assert not broken, "forbidden imports:\n" + "\n".join(broken)


def test_every_rule_names_real_modules() -> None:
    # A misspelt prefix would make its rule silently vacuous.
    names = set(package_edges())
    for owner, forbidden in FORBIDDEN.items():
        for prefix in (owner, *forbidden):
            assert any(covers(prefix, name) for name in names), prefix


# The checker on synthetic sources ---------------------------------------------------------


def test_relative_imports_resolve_against_the_package() -> None:
    source = (
        "from ..io import atomic_open\n"
        "from .. import experiments\n"
        "from . import plots\n"
        "from .scales import FORMATS\n"
        "import scmm.sweeps.cli\n"
    )
    too_far = "def lazy():\n    from ...outside import thing\n"
    with pytest.raises(ValueError, match="above the top-level package"):
        imported_modules(source + too_far, "scmm.analysis.scales", is_package=False)
    found = imported_modules(source, "scmm.analysis.scales", False)
    assert {"scmm.io", "scmm.io.atomic_open", "scmm.experiments", "scmm.analysis.plots"} <= found
    assert {"scmm.analysis.scales.FORMATS", "scmm.sweeps.cli"} <= found
    # In a package's __init__, "." is the package itself; in a module, the module's package.
    assert "scmm.analysis.plots" in imported_modules("from . import plots", "scmm.analysis", True)
    assert "scmm.plots" in imported_modules("from . import plots", "scmm.analysis", False)


def test_a_broken_rule_is_reported_with_the_edge_and_the_rule() -> None:
    lazy = "def plot():\n    from ..experiments.files import atomic_open\n"
    edges = {
        "scmm.analysis.scales": imported_modules(lazy, "scmm.analysis.scales", False),
        "scmm.io": imported_modules("from .models import CharLM", "scmm.io", False),
        "scmm.datasets.vocab": imported_modules("from ..io import x", "scmm.datasets.vocab", False),
    }
    assert violations(edges) == [
        "scmm.analysis.scales -> scmm.experiments.files (rule: scmm.analysis !-> scmm.experiments)",
        "scmm.analysis.scales -> scmm.experiments.files.atomic_open"
        " (rule: scmm.analysis !-> scmm.experiments)",
        "scmm.io -> scmm.models (rule: scmm.io !-> scmm.models)",
        "scmm.io -> scmm.models.CharLM (rule: scmm.io !-> scmm.models)",
    ]


def test_prefixes_match_whole_names_only() -> None:
    assert covers("scmm.io", "scmm.io") and covers("scmm.io", "scmm.io.atomic_open")
    assert not covers("scmm.io", "scmm.iox") and not covers("scmm.sweeps", "scmm.sweep")
    rules = {"scmm.analysis": ("scmm.experiments",)}
    assert not violations({"scmm.analysis_tools": {"scmm.experiments"}}, rules)
    assert not violations({"scmm.analysis": {"scmm.experimental"}}, rules)
    assert violations({"scmm.analysis": {"scmm.experiments"}}, rules)


def test_sampling_is_imported_by_nothing_and_imports_no_sweep() -> None:
    edges = {
        "scmm.experiments.runner": {"scmm.sample.cli"},
        "scmm.io": {"scmm.sample"},
        "scmm.sample.cli": {"scmm.experiments.checkpoints", "scmm.sweeps.cli"},
    }
    assert violations(edges) == [
        "scmm.experiments.runner -> scmm.sample.cli (rule: scmm.experiments !-> scmm.sample)",
        "scmm.io -> scmm.sample (rule: scmm.io !-> scmm.sample)",
        "scmm.sample.cli -> scmm.sweeps.cli (rule: scmm.sample !-> scmm.sweeps)",
    ]


def test_the_coordinate_check_is_imported_by_nothing_and_imports_no_sweep() -> None:
    edges = {
        "scmm.analysis.coordinates": {"scmm.coord_check.measure"},
        "scmm.sample.cli": {"scmm.coord_check"},
        "scmm.coord_check.measure": {"scmm.models", "scmm.training", "scmm.analysis.scales"},
        "scmm.coord_check.cli": {"scmm.experiments.overrides", "scmm.sweeps.presets"},
    }
    assert violations(edges) == [
        "scmm.analysis.coordinates -> scmm.coord_check.measure"
        " (rule: scmm.analysis !-> scmm.coord_check)",
        "scmm.coord_check.cli -> scmm.sweeps.presets (rule: scmm.coord_check !-> scmm.sweeps)",
        "scmm.sample.cli -> scmm.coord_check (rule: scmm.sample !-> scmm.coord_check)",
    ]

"""scmm.exit_codes: one definition the experiment and sweep command lines share."""

import ast
import os
import pathlib
import subprocess
import sys

from scmm import exit_codes
from scmm.experiments import reporting as experiment_reporting
from scmm.sweeps import cli as sweep_cli
from scmm.sweeps import runner as sweep_runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_codes_are_distinct_shell_exit_statuses() -> None:
    codes = {
        name: getattr(exit_codes, name)
        for name in dir(exit_codes)
        if name.startswith("EXIT_") and name != "EXIT_OK"  # EXIT_OK is EXIT_FINISHED's alias
    }
    assert len(set(codes.values())) == len(codes), codes
    assert all(isinstance(code, int) and 0 <= code <= 255 for code in codes.values()), codes
    # What a caller (CI, a shell script, the sweep reading its trials) relies on:
    assert (exit_codes.EXIT_FINISHED, exit_codes.EXIT_USAGE, exit_codes.EXIT_DIVERGED) == (0, 2, 3)
    assert exit_codes.EXIT_OK == 0 and exit_codes.EXIT_INTERRUPTED == 128 + 2  # SIGINT


def test_every_module_uses_the_shared_definition() -> None:
    # Same objects, not just equal values (a run's status maps to these).
    for name in ("EXIT_FINISHED", "EXIT_FAILED", "EXIT_DIVERGED", "EXIT_INTERRUPTED"):
        assert getattr(experiment_reporting, name) is getattr(exit_codes, name), name
    statuses = ("finished", "failed", "diverged", "interrupted")
    assert [experiment_reporting.run_exit_code(s) for s in statuses] == [0, 1, 3, 130]
    assert sweep_cli.EXIT_USAGE is exit_codes.EXIT_USAGE
    assert sweep_runner.EXIT_INTERRUPTED is exit_codes.EXIT_INTERRUPTED


def test_no_module_assigns_a_shared_exit_code_itself() -> None:
    shared = {name for name in dir(exit_codes) if name.startswith("EXIT_")}
    copies = []
    for path in pathlib.Path(ROOT, "scmm").rglob("*.py"):
        if path.name == "exit_codes.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
                copies += [f"{path.name}: {name}" for name in sorted(names & shared)]
    assert not copies, f"exit codes defined outside scmm/exit_codes.py: {copies}"


def test_command_lines_get_their_codes_without_loading_tensorflow() -> None:
    probe = (
        "import sys; import scmm.exit_codes, scmm.experiments, scmm.sweeps.cli;"
        " print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr

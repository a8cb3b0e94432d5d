import subprocess
import sys

from conftest import REPO


def test_import_is_lazy():
    code = "import sys, thermobench; print(any(m in sys.modules for m in ('torch', 'phonopy', 'matgl')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_ci_runs_the_readme_commands_verbatim():
    readme = (REPO / "README.md").read_text()
    commands = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd ", "export "))]
    assert len(commands) == 2
    for command in commands:
        assert command in readme, command

import subprocess
import sys
from pathlib import Path

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


def _module_graph(root: Path) -> dict[str, set[str]]:
    """Module-level imports between the package's own modules (lazy imports inside functions excluded)."""
    import ast

    modules = {}
    for path in [*(root / "generate").rglob("*.py"), *(root / "thermobench").rglob("*.py")]:
        name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                hits = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
                edges |= hits or ({node.module} & modules.keys())
            elif isinstance(node, ast.Import):
                edges |= {a.name for a in node.names} & modules.keys()
        graph[name] = {e for e in edges if not name.startswith(e + ".")}  # a package re-exporting is no circle
    return graph


def test_layout_small_modules_and_no_import_circle():
    root = Path(__file__).resolve().parents[1]
    long = {str(p.relative_to(root)): n for p in [*(root / "generate").rglob("*.py"), *(root / "thermobench").rglob("*.py")]
            if (n := len(p.read_text().splitlines())) > 700}
    assert not long, f"modules over 700 lines: {long}"
    graph = _module_graph(root)

    def reaches(start, target, seen):
        for nxt in graph[start]:
            if nxt == target or (nxt not in seen and (seen.add(nxt) or reaches(nxt, target, seen))):
                return True
        return False

    circles = sorted(m for m in graph if reaches(m, m, set()))
    assert not circles, f"modules in an import circle: {circles}"

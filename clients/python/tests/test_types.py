"""Types: the package passes `mypy --strict` (configured in pyproject.toml), and the
installed package carries py.typed, so an application's type checker reads its types."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import fanin_shim

CLIENT = Path(__file__).resolve().parents[1]


def mypy(*args: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(cache), *args],
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )


def test_the_package_passes_mypy_strict(tmp_path):
    done = mypy("src/fanin_shim", cwd=CLIENT, cache=tmp_path / "cache")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("Success: no issues found"), done.stdout


def test_the_installed_package_ships_its_types(tmp_path):
    installed = Path(fanin_shim.__file__).parent
    assert CLIENT not in installed.parents, f"{installed}: not the installed package"
    assert (installed / "py.typed").is_file()
    # Without py.typed mypy would refuse the import ("missing library stubs or py.typed
    # marker"); with it, a mistyped use is an error.
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent(
        """
        from opentelemetry import metrics
        import fanin_shim

        provider = fanin_shim.setup(service_name="typed")
        requests: metrics.Counter = provider.get_meter("typed").create_counter("requests")
        requests.add(1, {"route": "/"})
        flushed: bool = fanin_shim.force_flush()
        """
    ))
    done = mypy("app.py", cwd=tmp_path, cache=tmp_path / "cache")
    assert done.returncode == 0, done.stdout + done.stderr
    app.write_text(app.read_text() + 'requests.add("one")\n')
    done = mypy("app.py", cwd=tmp_path, cache=tmp_path / "cache")
    assert done.returncode == 1 and 'Argument 1 to "add" of "Counter"' in done.stdout, done.stdout

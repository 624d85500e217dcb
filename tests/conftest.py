import textwrap
from pathlib import Path

import pytest

from dynexport.__main__ import main


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that runs the command line runs a whole pipeline: `slow` (`pytest -m "not slow"`
    leaves them out)."""
    for item in items:
        if "cli" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def write_script(tmp_path):
    """Write a dynexport script (dedented) into tmp_path and return its path."""

    def write(source: str, name: str = "model.py") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(source))
        return path

    return write


@pytest.fixture
def cli(capsys):
    """Run `python -m dynexport ARGS` in-process; return (exit status, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run

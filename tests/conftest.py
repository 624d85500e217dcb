import json
import textwrap
from pathlib import Path

import jsonschema
import pytest

import dynexport
from dynexport.__main__ import main

REPO = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((Path(dynexport.__file__).parent / "schema" / "report.schema.json")
                    .read_text())


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


def read_report(out: Path) -> dict:
    """report.json from `out`, validated against the schema of contract §3."""
    report = json.loads((out / "report.json").read_text())
    jsonschema.validate(report, SCHEMA)
    return report

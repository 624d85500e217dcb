"""What several test modules share that is not a fixture: the repository root and report.json
read and checked against the schema of contract §3."""

import json
from pathlib import Path

import jsonschema

import dynexport

REPO = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((Path(dynexport.__file__).parent / "schema" / "report.schema.json")
                    .read_text())


def read_report(out: Path) -> dict:
    """report.json from `out`, validated against the schema of contract §3."""
    report = json.loads((out / "report.json").read_text())
    jsonschema.validate(report, SCHEMA)
    return report

"""One source for the report's vocabularies: dynexport/names.py. The schema's enums must be
the same lists, and every report rendering must validate against the schema."""

import json
from pathlib import Path

import dynexport
from dynexport import names

SCHEMA = json.loads((Path(dynexport.__file__).parent / "schema" / "report.schema.json")
                    .read_text())
PROPS = SCHEMA["properties"]


def _enum(*path):
    node = PROPS
    for key in path:
        node = node[key]
    return node["enum"]


def test_schema_enums_are_the_code_vocabularies():
    assert _enum("stages", "items", "properties", "name") == list(names.STAGE_NAMES)
    assert _enum("stages", "items", "properties", "status") == list(names.STAGE_STATUSES)
    assert _enum("capture", "properties", "strategy") == [*names.STRATEGIES, None]
    assert _enum("hazards", "items", "properties", "category") == list(names.CATEGORIES)
    assert _enum("hazards", "items", "properties", "severity") == list(names.SEVERITIES)
    assert _enum("unsupported_ops", "items", "properties", "backend") == list(names.BACKENDS)
    assert _enum("verification", "items", "properties", "runtime") == list(names.RUNTIMES)
    assert _enum("verification", "items", "properties", "inputs") == list(names.INPUT_KINDS)
    assert _enum("benchmark", "items", "properties", "runtime") == ["eager", *names.RUNTIMES]
    assert _enum("precision", "properties", "precision") == list(names.SHIPPED_PRECISIONS)
    assert _enum("serving", "items", "properties", "layout") == list(names.LAYOUTS)
    divergence = ("divergence", "items", "properties")
    assert _enum(*divergence, "runtime") == list(names.RUNTIMES)
    assert _enum(*divergence, "precision") == [p for p in names.SHIPPED_PRECISIONS
                                               if p != "fp16-weights"]
    assert _enum(*divergence, "cause") == list(names.CAUSES)
    assert _enum(*divergence, "culprits", "items", "properties", "translation") == [
        *names.TRANSLATIONS, None]
    assert names.PRECISIONS == (*names.SHIPPED_PRECISIONS, "auto")


def test_pipeline_stages_use_the_vocabulary_in_order():
    from dynexport.pipeline import stages

    assert tuple(stage.name for stage in stages()) == names.STAGE_NAMES

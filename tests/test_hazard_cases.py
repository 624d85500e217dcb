"""Every hazard rule has a case (examples/hazards/, one per file) where it alone produces its
hazard: present with every rule, gone with that rule removed."""

import sys
from pathlib import Path

import pytest
from helpers import REPO

from dynexport import pipeline
from dynexport.hazards.find import RULES, find_hazards
from dynexport.script import load_script
from dynexport.stage import Options, Run, StageRecord

CASES = sorted((REPO / "examples" / "hazards").glob("*.py"))
RULE_NAMES = {f"{rule.__module__.rsplit('.', 1)[-1]}.{rule.__name__}": rule for rule in RULES}


def _load(path: Path):
    """The case as a Script, and its module (for `tags` and `expected`)."""
    script = load_script(path)
    return script, vars(sys.modules[f"_dynexport_script_{path.stem}"])


def _evidence(path: Path, out: Path):
    script, case = _load(path)
    if "verification" not in case["tags"]:
        return case, pipeline.explain_evidence(script)[1]
    state = Run(str(path), [], Options(out_dir=out))
    state.results["load"] = script
    state.records.append(StageRecord("load", "ok"))
    pipeline.execute(state, pipeline.stages()[1:])
    return case, pipeline.evidence(state)


def test_every_rule_has_a_case():
    named = {_load(path)[1]["expected"][2] for path in CASES}
    assert named == set(RULE_NAMES)


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_the_rule_alone_finds_its_case(path, tmp_path):
    case, evidence = _evidence(path, tmp_path)
    category, severity, rule = case["expected"]
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1)
                if text.rstrip().endswith("# hazard"))

    def at_line(hazards):
        return [h for h in hazards if h.category == category and h.line == line
                and Path(h.file or "").resolve() == path.resolve()]

    found = at_line(find_hazards(evidence))
    assert [(h.severity, h.rule) for h in found] == [(severity, rule)]
    without = tuple(r for r in RULES if r is not RULE_NAMES[rule])
    assert at_line(find_hazards(evidence, without)) == []

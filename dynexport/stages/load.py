"""Load stage: the script (or an integration's config) read into a Script (script.py)."""

from __future__ import annotations

from dynexport.script import ScriptLoader, load_script
from dynexport.stage import Stage


def load_stage(loader: ScriptLoader = load_script) -> Stage:
    """The load stage: `loader` turns the script's path and arguments into a Script (a
    SCRIPT.py by default; an integration may read a config instead)."""
    return Stage("load", lambda run: loader(run.script_path, run.script_args))

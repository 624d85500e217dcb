"""What a sweep runs: the scripts named on the command line (files, folders of scripts, or a
YAML/TOML list with per-script arguments and options), each as a `Job`, and each job's input
fingerprint, which decides whether an earlier result can stand."""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynexport.report import installed_versions

LIST_SUFFIXES = (".yaml", ".yml", ".toml")
# What a run depends on besides its own files: these versions change every result.
FINGERPRINT_VERSIONS = ("dynexport", "torch", "onnx", "onnxscript", "onnxruntime", "openvino")


class PlanError(ValueError):
    """The paths or the list do not describe scripts to run (the sweep exits 2)."""


@dataclass
class Job:
    """One script to run: `script` as given (a list's entries: as written in the list), `path`
    where it is, `name` its folder under --out, its own arguments and dynexport options, and
    its timeout in seconds."""

    script: str
    path: Path
    name: str
    args: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)
    timeout: float = 3600.0
    raw: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"script": self.script, "path": str(self.path), "name": self.name,
                "args": self.args, "options": self.options, "timeout": self.timeout,
                "raw": self.raw}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        return cls(**{**data, "path": Path(data["path"])})


def scripts_in(folder: Path) -> list[Path]:
    """A folder's scripts: its *.py files, sorted, without `_helpers.py` and `__init__.py`."""
    return sorted(p for p in folder.glob("*.py") if not p.name.startswith("_"))


def plan(paths: list[str], options: list[str], timeout: float, raw: bool) -> list[Job]:
    """The jobs of `paths` in the order given, each with the sweep-wide `options`, `timeout`
    and `raw`; a list file's entries may add options and set their own timeout."""
    jobs: list[Job] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = scripts_in(path)
            if not found:
                raise PlanError(f"{given} holds no script (*.py not starting with `_`)")
            jobs += [Job(str(p), p, p.stem, options=list(options), timeout=timeout, raw=raw)
                     for p in found]
        elif path.suffix in LIST_SUFFIXES and path.is_file():
            jobs += _from_list(path, options, timeout, raw)
        elif path.suffix == ".py" and path.is_file():
            jobs.append(Job(given, path, path.stem, options=list(options), timeout=timeout,
                            raw=raw))
        else:
            raise PlanError(f"{given} is not a script (.py), a folder of scripts or a list "
                            f"({', '.join(LIST_SUFFIXES)})")
    if not jobs:
        raise PlanError("no script to run: name scripts, folders of scripts or a list")
    return _unique_names(jobs)


def _load_list(path: Path) -> Any:
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover - Python 3.10
                import tomli as tomllib
            return tomllib.loads(text)
        import yaml

        return yaml.safe_load(text)
    except ImportError as exc:
        raise PlanError(f"reading {path} needs {exc.name}: pip install "
                        f"{'tomli' if exc.name == 'tomli' else 'pyyaml'}") from exc
    except Exception as exc:  # the parsers' own error types differ
        raise PlanError(f"{path} is not valid {path.suffix[1:].upper()}: {exc}") from exc


_ENTRY_KEYS = {"path", "name", "args", "options", "timeout"}


def _from_list(path: Path, options: list[str], timeout: float, raw: bool) -> list[Job]:
    """A list: `scripts` (a list of a path, or of a table with `path` and optionally `name`,
    `args`, `options`, `timeout`) and optionally `defaults` (`options`, `timeout`), paths
    relative to the list's folder."""
    data = _load_list(path)
    if not isinstance(data, dict) or not isinstance(data.get("scripts"), list):
        raise PlanError(f"{path} needs a `scripts` list, e.g. in TOML:\n"
                        '[[scripts]]\npath = "model.py"\nargs = ["--config", "tiny"]')
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict) or set(defaults) - {"options", "timeout"}:
        raise PlanError(f"{path}: `defaults` takes `options` and `timeout` only")
    jobs = []
    for entry in data["scripts"]:
        entry = {"path": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or "path" not in entry or set(entry) - _ENTRY_KEYS:
            raise PlanError(f"{path}: an entry of `scripts` is a path or a table with `path` "
                            f"and optionally {', '.join(sorted(_ENTRY_KEYS - {'path'}))}; "
                            f"got {entry!r}")
        script = path.parent / entry["path"]
        if not script.is_file():
            raise PlanError(f"{path}: {entry['path']} is not a file (paths are relative to "
                            "the list's folder)")
        extra = [*_strings(defaults.get("options", []), path),
                 *_strings(entry.get("options", []), path)]
        jobs.append(Job(str(entry["path"]), script, str(entry.get("name", script.stem)),
                        args=_strings(entry.get("args", []), path),
                        options=[*options, *extra],
                        timeout=float(entry.get("timeout", defaults.get("timeout", timeout))),
                        raw=raw))
    return jobs


def _strings(value: Any, path: Path) -> list[str]:
    """A list of arguments: a list of strings or numbers, or one string split on spaces."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return [str(v) for v in value]
    raise PlanError(f"{path}: arguments and options are a list of strings, got {value!r}")


def _unique_names(jobs: list[Job]) -> list[Job]:
    """Each job's folder name once: a repeated name gets -2, -3, ... in order."""
    seen: dict[str, int] = {}
    for job in jobs:
        count = seen[job.name] = seen.get(job.name, 0) + 1
        if count > 1:
            job.name = f"{job.name}-{count}"
    return jobs


def local_imports(script: Path) -> list[Path]:
    """Files next to `script` that it imports (`import _zoo`, `from helpers import x`): their
    changes change its result as its own do."""
    try:
        tree = ast.parse(script.read_text(), str(script))
    except (SyntaxError, UnicodeDecodeError):
        return []
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    found = []
    for name in sorted(names):
        for candidate in (script.parent / f"{name}.py", script.parent / name / "__init__.py"):
            if candidate.is_file():
                found.append(candidate)
    return found


@functools.cache
def _dynexport_sources() -> str:
    """A digest of dynexport's own code: an editable install keeps its version number while
    the code under it changes."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent.parent
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def fingerprint(job: Job) -> str:
    """A digest of what the job's result depends on: the script and the files next to it that
    it imports, its arguments, options, timeout and route, dynexport's code and the versions
    of the libraries it converts with."""
    digest = hashlib.sha256()
    for path in [job.path, *local_imports(job.path)]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    setup = {"args": job.args, "options": job.options, "timeout": job.timeout, "raw": job.raw,
             "versions": installed_versions(FINGERPRINT_VERSIONS),
             "dynexport_sources": _dynexport_sources()}
    digest.update(json.dumps(setup, sort_keys=True).encode())
    return digest.hexdigest()[:16]

"""`python -m dynexport sweep PATH... [sweep options] [-- DYNEXPORT OPTIONS]`: run dynexport
(and with --raw the raw tools) on every script, each in its own process with its own timeout,
locally (--jobs) or on Ray (--ray), and write sweep.json, sweep.md and sweep.html under --out.
Exit 0 when every script exited 0, 1 otherwise, 2 for an unusable command or list."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dynexport.report import installed_versions
from dynexport.sweep import compare as comparing
from dynexport.sweep.plan import Job, PlanError, fingerprint, plan
from dynexport.sweep.progress import SweepProgress
from dynexport.sweep.ray_backend import RayUnavailable
from dynexport.sweep.run import MEMORY_PER_RUN_GB, default_jobs, end_all, run_local
from dynexport.sweep.table import (
    columns,
    make_row,
    markdown_table,
    write_html,
    write_json,
    write_markdown,
)

EXIT_OK, EXIT_FAILED, EXIT_UNUSABLE = 0, 1, 2
DEFAULT_OUT = Path("dynexport_sweep")
DEFAULT_TIMEOUT = 3600.0
ROW_FILE = "row.json"  # each job's row with its fingerprint, in its folder: what a re-run keeps


class SweepUsageError(ValueError):
    """The sweep's command line is wrong."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise SweepUsageError(f"{message}. Run `python -m dynexport sweep --help`.")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m dynexport sweep",
        usage="python -m dynexport sweep PATH... [options] [-- DYNEXPORT_OPTIONS...]",
        description="Run dynexport on every script of a model zoo, each in its own process, "
                    "and write one table (sweep.json, sweep.md, sweep.html). PATH: a script, a "
                    "folder of scripts (*.py not starting with _), or a YAML/TOML list with "
                    "per-script args and options. Options after `--` go to every dynexport run.")
    parser.add_argument("paths", nargs="+", metavar="PATH")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"the sweep's folder (default {DEFAULT_OUT}/): one folder per "
                        "script, sweep.json, sweep.md, sweep.html")
    parser.add_argument("--jobs", "-j", type=int, help="runs side by side (default: the "
                        "cores, at most one per --memory-per-run of available memory)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help="a run still going after this is ended with its processes and "
                        f"its row says so (default {DEFAULT_TIMEOUT:g}; per route with --raw)")
    parser.add_argument("--raw", action="store_true", help="also run the raw tools "
                        "(torch.export, torch.onnx + onnxruntime, ov.convert_model) on each "
                        "script and compare")
    parser.add_argument("--force", action="store_true", help="run every script, also those "
                        "whose inputs (script, its local imports, options, versions) are "
                        "unchanged since their last run in --out")
    parser.add_argument("--compare", type=Path, metavar="OLD.json",
                        help="list what got better, worse or changed since that sweep.json")
    parser.add_argument("--ray", metavar="auto|ADDRESS", help="run each script as a Ray task: "
                        "`auto` joins the cluster `ray start` made on this machine (or starts a "
                        "local one), ADDRESS joins that one (needs the ray extra)")
    parser.add_argument("--shared", action="store_true", help="--ray: scripts and --out are "
                        "at the same path on every node (shared storage); nothing is shipped")
    parser.add_argument("--cpus-per-run", type=float, default=1.0,
                        help="--ray: CPUs each task reserves (default 1)")
    parser.add_argument("--memory-per-run", type=float, default=MEMORY_PER_RUN_GB,
                        metavar="GB", help="memory one run needs: sizes the default --jobs "
                        f"and each Ray task's reservation (default {MEMORY_PER_RUN_GB:g})")
    return parser


def _check_options(jobs: list[Job]) -> None:
    """Each job's dynexport options as dynexport would parse them (a typo fails the sweep
    now, not every run later); --out is the sweep's."""
    from dynexport.__main__ import UsageError
    from dynexport.__main__ import _parser as dynexport_parser

    for job in jobs:
        try:
            parsed = dynexport_parser().parse_args([*job.options, "script.py"])
        except UsageError as exc:
            raise SweepUsageError(f"{job.script}: dynexport options {job.options}: {exc}") \
                from exc
        if parsed.out is not None or parsed.mmdet3d is not None or parsed.script != "script.py":
            raise SweepUsageError(f"{job.script}: dynexport options {job.options} set --out, "
                                  "--mmdet3d or a script; the sweep sets --out (one folder "
                                  "per script) and takes scripts as PATHs")


def _kept_row(job: Job, out: Path, digest: str) -> dict[str, Any] | None:
    """The row of an earlier run of the same inputs, if it reached a verdict."""
    path = out / job.name / ROW_FILE
    try:
        row = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if row.get("fingerprint") != digest or row.get("exit") is None:
        return None
    return {**row, "script": job.script, "reused": True}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    console, errors = Console(), Console(stderr=True)
    split = argv.index("--") if "--" in argv else len(argv)
    try:
        args = _parser().parse_args(argv[:split])
        options = argv[split + 1:]
        if args.jobs is not None and args.jobs < 1:
            raise SweepUsageError(f"--jobs {args.jobs}: give at least 1")
        if not args.timeout > 0:
            raise SweepUsageError(f"--timeout {args.timeout:g} is not a positive number of "
                                  "seconds")
        if args.shared and not args.ray:
            raise SweepUsageError("--shared is for --ray (local runs write to --out anyway)")
        jobs = plan(args.paths, options, args.timeout, args.raw)
        _check_options(jobs)
        old_rows = comparing.load_rows(args.compare) if args.compare else None
    except (SweepUsageError, PlanError, comparing.CompareError) as exc:
        errors.print(f"[bold red]dynexport sweep:[/] {escape(str(exc))}", highlight=False,
                     soft_wrap=True)
        return EXIT_UNUSABLE
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, Any]] = {}
    digests = {job.name: fingerprint(job) for job in jobs}
    workers = args.jobs or default_jobs(args.memory_per_run)
    backend = f"ray {args.ray}" if args.ray else f"local, {workers} jobs"
    with SweepProgress(console, jobs, "submitted" if args.ray else "running") as progress:
        to_run = []
        for job in jobs:
            kept = None if args.force else _kept_row(job, out, digests[job.name])
            if kept is None:
                to_run.append(job)
            else:
                rows[job.name] = kept
                progress.finished(job, kept, reused=True)
        try:
            for job, outcome in _backend(args, to_run, out, workers, progress.started):
                row = make_row(job, outcome, out, digests[job.name])
                (out / job.name).mkdir(parents=True, exist_ok=True)
                (out / job.name / ROW_FILE).write_text(json.dumps(row, indent=1))
                rows[job.name] = row
                progress.finished(job, row)
        except KeyboardInterrupt:
            end_all()
            raise
        except RayUnavailable as exc:
            errors.print(f"[bold red]dynexport sweep:[/] {escape(str(exc))}",
                         highlight=False, soft_wrap=True)
            return EXIT_UNUSABLE
    ordered = [rows[job.name] for job in jobs]
    meta = {"created": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
            "backend": backend, "versions": installed_versions()}
    changes = comparing.compare(old_rows, ordered) if old_rows is not None else None
    if changes is not None:
        meta["compare"] = {"with": str(args.compare), "changes": changes}
    write_json(out / "sweep.json", ordered, meta)
    write_markdown(out / "sweep.md", ordered, meta,
                   comparing.markdown(changes, args.compare) if changes is not None else None)
    write_html(out / "sweep.html", ordered, meta, changes)
    _print(console, ordered, changes, args.compare)
    console.print(f"Table: [bold]{out / 'sweep.md'}[/], {out / 'sweep.html'}, "
                  f"{out / 'sweep.json'}")
    return EXIT_OK if all(row["exit"] == 0 for row in ordered) else EXIT_FAILED


def _backend(args: argparse.Namespace, jobs: list[Job], out: Path, workers: int, started):
    if not jobs:
        return iter(())
    if args.ray:
        from dynexport.sweep.ray_backend import run_ray

        return run_ray(jobs, out, args.ray, args.shared, args.cpus_per_run,
                       args.memory_per_run, started)
    return run_local(jobs, out, workers, started)


def _print(console: Console, rows: list[dict[str, Any]],
           changes: list[dict[str, Any]] | None, compared_with: Path | None) -> None:
    """The table (and the changes) on a terminal as rich tables, else as markdown."""
    if not console.is_terminal:
        console.print(markdown_table(rows, links=False), markup=False, highlight=False,
                      soft_wrap=True)
        if changes is not None:
            console.print(comparing.markdown(changes, compared_with), markup=False,
                          highlight=False, soft_wrap=True)
        return
    head, body = columns(rows, links=False)
    table = Table(*head, title="dynexport sweep")
    for row, cells in zip(rows, body, strict=True):
        table.add_row(*(escape(c) for c in cells), style=None if row["exit"] == 0 else "red")
    console.print(table)
    if changes is not None:
        changed = Table("script", "what", "before", "now", "change",
                        title=f"Compared with {compared_with}")
        for change in changes:
            style = {"worse": "red", "better": "green"}.get(change["change"])
            changed.add_row(*(escape(str(change[k])) for k in
                              ("script", "what", "old", "new", "change")), style=style)
        console.print(changed if changes else f"Compared with {compared_with}: no differences")

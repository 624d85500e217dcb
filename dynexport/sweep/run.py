"""Running one job: `python -m dynexport` on its script in a process of its own (a new session,
so that a timeout ends the script's whole process group, dynexport's forked children
included), then, with --raw, the raw-tools route likewise. Also the local pool that runs jobs
side by side, and the default size of that pool.

A job's folder under --out holds `dynexport/` (dynexport's --out: report.json, report.md,
artifacts), `dynexport.log` (its console output), and with --raw `raw/` (raw.json, raw.onnx)
and `raw.log`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from dynexport.sweep.plan import Job

MEMORY_PER_RUN_GB = 2.0  # FlashOcc M0, the largest model we deploy, peaks near 2 GB in a run
DYNEXPORT_DIR, RAW_DIR = "dynexport", "raw"
DYNEXPORT_LOG, RAW_LOG = "dynexport.log", "raw.log"

# Process groups of the runs under way, ended if the sweep itself is interrupted.
_running: set[int] = set()
_running_lock = threading.Lock()


def default_jobs(memory_per_run_gb: float = MEMORY_PER_RUN_GB) -> int:
    """As many runs as there are cores, and no more than the available memory holds."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    fit = _available_memory_gb() // memory_per_run_gb if memory_per_run_gb > 0 else None
    return max(1, min(cores or 1, int(fit) if fit is not None else cores or 1))


def _available_memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None  # not Linux: sized by cores alone


def run_process(command: list[str], log: Path, timeout: float,
                cwd: Path | None = None) -> tuple[int | None, float]:
    """Run `command` with its output in `log`; its exit status (None when it was still running
    at `timeout` seconds and was ended) and its wall time. The process group is ended in
    either case: nothing a script started outlives its run."""
    start = time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, cwd=cwd, start_new_session=True)
    with _running_lock:
        _running.add(process.pid)
    try:
        code: int | None = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        _end_group(process.pid)
        process.wait()
        with _running_lock:
            _running.discard(process.pid)
    return code, round(time.perf_counter() - start, 1)


def _end_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already


def end_all() -> None:
    """End every run under way (the sweep was interrupted)."""
    with _running_lock:
        groups = list(_running)
    for pgid in groups:
        _end_group(pgid)


def run_job(job: Job, folder: Path) -> dict[str, Any]:
    """Run `job` into `folder` (emptied first); what the processes did: `exit` (None: ended at
    the timeout), `seconds`, `timed_out`, and with --raw the same for the raw route."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    command = [sys.executable, "-m", "dynexport", "--out", str(folder / DYNEXPORT_DIR),
               *job.options, str(job.path), *job.args]
    code, seconds = run_process(command, folder / DYNEXPORT_LOG, job.timeout)
    outcome: dict[str, Any] = {"exit": code, "seconds": seconds, "timed_out": code is None}
    if job.raw:
        raw_json = folder / RAW_DIR / "raw.json"
        command = [sys.executable, "-m", "dynexport.sweep.raw", "--json", str(raw_json),
                   str(job.path), *job.args]
        code, seconds = run_process(command, folder / RAW_LOG, job.timeout)
        outcome["raw"] = {"exit": code, "seconds": seconds, "timed_out": code is None}
    return outcome


def run_local(jobs: list[Job], out: Path, workers: int,
              started: Callable[[Job], None]) -> Iterator[tuple[Job, dict[str, Any]]]:
    """Run `jobs` `workers` at a time, each into out/<name>; yield (job, outcome) as each
    finishes. `started(job)` is called when a job's run begins."""

    def one(job: Job) -> dict[str, Any]:
        started(job)
        return run_job(job, out / job.name)

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sweep")
    try:
        futures = {pool.submit(one, job): job for job in jobs}
        for future in as_completed(futures):
            yield futures[future], future.result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        end_all()

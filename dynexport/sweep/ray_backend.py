"""The Ray backend (`--ray auto|ADDRESS`, the optional `ray` extra): each job is a Ray task
that declares the CPUs and memory of one run and runs it exactly as the local pool does
(run.run_job: the same processes, timeout and folder layout), so the table made from the
files is the same.

Scripts travel as one zip of the folder that holds every script's folder, put in Ray's object
store once and unpacked by each task (what a `working_dir` runtime environment does; Ray takes
a local working_dir only for a whole job, in `ray.init`, and the sweep may run in a job that
is already connected). The task runs the job into a temporary folder on its node and sends
the folder's files back, which are written under --out. With `--shared` nothing travels: the
scripts and --out are taken to be at the same path on every node (shared storage) and the
task writes there. A task whose worker dies is retried once (Ray's `max_retries`); a second
death is reported in the row with Ray's error."""

from __future__ import annotations

import fnmatch
import io
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from dynexport.sweep.plan import Job
from dynexport.sweep.run import run_job

RETRIES = 1
# Kept out of the scripts' zip: artifacts of earlier runs, caches.
EXCLUDES = ["__pycache__", "*.pt2", "*.onnx", "*.bin", "dynexport_out", "dynexport_sweep",
            ".git"]


class RayUnavailable(RuntimeError):
    """ray is not installed, or the cluster cannot be reached (the sweep exits 2)."""


def _remote_run(job_json: dict[str, Any], scripts: bytes | None, shared_out: str | None,
                omp_threads: str | None) -> tuple[dict[str, Any], dict[str, bytes] | None]:
    """On a worker: run the job (its path relative to the `scripts` zip, or absolute with
    --shared); its outcome, and its folder's files unless --shared. The runs see the driver's
    OMP_NUM_THREADS (Ray sets the task's CPU count there), so that their numbers are those of
    a local run."""
    if omp_threads is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = omp_threads
    job = Job.from_json(job_json)
    if shared_out is not None:
        return run_job(job, Path(shared_out) / job.name), None
    scratch = Path(tempfile.mkdtemp(prefix="dynexport-sweep-"))
    try:
        zipfile.ZipFile(io.BytesIO(scripts)).extractall(scratch / "scripts")
        job.path = scratch / "scripts" / job.path
        folder = scratch / "out" / job.name
        outcome = run_job(job, folder)
        files = {path.relative_to(folder).as_posix(): path.read_bytes()
                 for path in sorted(folder.rglob("*")) if path.is_file()}
        return outcome, files
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def pack(root: Path, leave_out: Path) -> bytes:
    """A zip of `root`'s files, without EXCLUDES and without `leave_out` (the sweep's --out,
    when it is under root)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root)
            if (not path.is_file() or path.is_relative_to(leave_out)
                    or any(fnmatch.fnmatch(part, pattern) for part in relative.parts
                           for pattern in EXCLUDES)):
                continue
            archive.write(path, relative.as_posix())
    return buffer.getvalue()


def _connect(address: str) -> bool:
    """Connect to the cluster (`auto`: the one `ray start` or RAY_ADDRESS names, else a new
    local instance); True when this call started Ray (and so must stop it)."""
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailable("--ray needs the ray extra: pip install \"dynexport[ray]\" "
                             "(or pip install \"ray[default]\")") from exc
    if ray.is_initialized():
        return False
    try:
        ray.init(address=None if address == "auto" else address, log_to_driver=False,
                 include_dashboard=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayUnavailable(f"--ray {address}: cannot connect ({exc}). Start a cluster with "
                             "`ray start --head` and pass its address, or `--ray auto`") from exc
    return True


def run_ray(jobs: list[Job], out: Path, address: str, shared: bool, cpus: float,
            memory_gb: float, started: Callable[[Job], None]
            ) -> Iterator[tuple[Job, dict[str, Any]]]:
    """Submit each job as a Ray task; yield (job, outcome) as each finishes, its files
    written under out/<name>."""
    import ray

    started_ray = _connect(address)
    try:
        scripts = [job.path.resolve() for job in jobs]
        options = {"num_cpus": cpus, "memory": int(memory_gb * 2**30), "max_retries": RETRIES}
        if shared:
            sent = [replace(job, path=path) for job, path in zip(jobs, scripts, strict=True)]
            shared_out, packed = str(out.resolve()), None
        else:
            root = Path(os.path.commonpath([path.parent for path in scripts]))
            sent = [replace(job, path=path.relative_to(root))
                    for job, path in zip(jobs, scripts, strict=True)]
            shared_out, packed = None, ray.put(pack(root, out.resolve()))
        task = ray.remote(_remote_run).options(**options)
        omp = os.environ.get("OMP_NUM_THREADS")
        pending = {}
        for job, remote_job in zip(jobs, sent, strict=True):
            ref = task.remote(remote_job.to_json(), packed, shared_out, omp)
            pending[ref] = (job, time.time())
            started(job)
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            job, submitted = pending.pop(ref)
            try:
                outcome, files = ray.get(ref)
            except ray.exceptions.RayError as exc:
                yield job, _lost(job, exc, time.time() - submitted)
                continue
            if files is not None:
                _write(out / job.name, files)
            yield job, outcome
    finally:
        if started_ray:
            ray.shutdown()


def _lost(job: Job, exc: BaseException, seconds: float) -> dict[str, Any]:
    """The outcome of a task Ray could not complete (its worker died on every try)."""
    text = str(exc).strip().splitlines()
    error = (f"Ray task failed after {RETRIES + 1} tries: {type(exc).__name__}: "
             f"{text[0] if text else ''}")[:400]
    outcome: dict[str, Any] = {"exit": None, "seconds": round(seconds, 1), "timed_out": False,
                               "worker_error": error}
    if job.raw:
        outcome["raw"] = {"exit": None, "seconds": None, "timed_out": False, "error": error}
    return outcome


def _write(folder: Path, files: dict[str, bytes]) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

"""Seconds and peak memory per stage of the CLI pipeline, on FlashOcc by default.

    python benchmarks/pipeline.py [--runs 1] [--json FILE] [-- SCRIPT.py [SCRIPT_ARGS...]]

Each run is a fresh `python` process, as `python -m dynexport` is: interpreter start and
imports count in the wall time. The child runs `dynexport.pipeline.run_script` (what the CLI runs)
with an observer that samples its resident memory during each stage; the parent measures the
wall time and the peak RSS (getrusage) of the pipeline's process and of the largest of the
processes it forks for conversions and runtimes. Every step a stage announces
(`dynexport.progress.step`: each capture strategy, each conversion's export and save, each
runtime's compile and inputs) is timed too, for the per-step breakdown. Without a script it
runs `examples/flashocc.py` (M0) with ranks in the graph and precomputed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import PeakRSS, cpu_info, describe, versions

REPO = Path(__file__).resolve().parent.parent
FLASHOCC = [str(REPO / "examples" / "flashocc.py")]
DEFAULT_CASES = {"M0, ranks in the graph": FLASHOCC,
                 "M0, precomputed ranks": [*FLASHOCC, "--ranks", "precomputed"]}


def child(out: str, script: str, script_args: list[str], verify: bool = True) -> None:
    """Run the pipeline in this process; write per-stage seconds and peak RSS to out."""
    from dynexport import progress
    from dynexport.pipeline import Options, run_script

    class Sampling:
        def __init__(self, sampler: PeakRSS):
            self.sampler, self.stages, self.steps = sampler, [], []

            self.open: dict[str, tuple[str, float]] = {}  # stage -> (its current step, start)
            self.latest = ""

        def started(self, name: str) -> None:
            self.start = self.sampler.reset()
            self.latest, self.open[name] = name, ("(start)", time.perf_counter())

        def step(self, name: str, stage: str | None = None) -> None:
            stage = stage or self.latest
            self._close_step(stage)
            self.open[stage] = (name, time.perf_counter())

        def _close_step(self, stage: str) -> None:
            if stage in self.open:
                name, start = self.open.pop(stage)
                self.steps.append({"stage": stage, "step": name,
                                   "seconds": time.perf_counter() - start})

        def finished(self, record, error) -> None:
            self._close_step(record.name)
            self.stages.append({"name": record.name, "status": record.status,
                                "seconds": record.seconds, "rss_start": self.start,
                                "rss_peak": self.sampler.peak})

    with PeakRSS() as sampler:
        observer = Sampling(sampler)
        with progress.listening(observer.step):
            report = run_script(script, script_args,
                                Options(out_dir=Path(out) / "artifacts", verify=verify),
                                observer=observer)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the process's own peak
    forked = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # largest child
    Path(out, "stages.json").write_text(json.dumps(
        {"ok": report.ok, "stages": observer.stages, "steps": observer.steps,
         "peak_rss": own, "peak_rss_children": forked}, indent=1))


def measure(script_args: list[str], verify: bool = True) -> dict:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        flag = [] if verify else ["--no-verify"]
        subprocess.run([sys.executable, __file__, "--child", out, *flag, *script_args],
                       check=True)
        wall = time.perf_counter() - start
        result = json.loads(Path(out, "stages.json").read_text())
    result["wall_seconds"] = wall
    return result


def table(results: dict[str, list[dict]]) -> str:
    names = list(dict.fromkeys(s["name"] for runs in results.values() for s in runs[0]["stages"]))
    header = "| stage | " + " | ".join(f"{case}: s | peak GB" for case in results) + " |"
    lines = [header, "|---|" + "---:|---:|" * len(results)]
    for name in names:
        cells = []
        for runs in results.values():
            stages = [next((s for s in r["stages"] if s["name"] == name), None) for r in runs]
            stages = [s for s in stages if s]
            if not stages:
                cells += ["", ""]
                continue
            seconds = sorted(s["seconds"] for s in stages)[len(stages) // 2]
            cells += [f"{seconds:.1f}", f"{max(s['rss_peak'] for s in stages) / 1e9:.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    walls = [sorted(r["wall_seconds"] for r in runs)[len(runs) // 2] for runs in results.values()]
    peaks = [max(r["peak_rss"] for r in runs) for runs in results.values()]
    children = [max(r.get("peak_rss_children", 0) for r in runs) for runs in results.values()]
    lines.append("| **whole command (wall)** | " + " | ".join(
        f"**{w:.1f}** | **{p / 1e9:.2f}**" for w, p in zip(walls, peaks, strict=True)) + " |")
    lines.append("| largest forked child (peak RSS, shares the parent's pages) | " + " | ".join(
        f" | {c / 1e9:.2f}" for c in children) + " |")
    return "\n".join(lines)


def step_table(results: dict[str, list[dict]]) -> str:
    """Seconds per step (the first run of each case), in the order they ran."""
    lines = []
    for case, runs in results.items():
        lines += [f"\n{case}\n", "| stage | step | seconds |", "|---|---|---:|"]
        lines += [f"| {s['stage']} | {s['step']} | {s['seconds']:.2f} |"
                  for s in runs[0]["steps"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        verify = argv[2:3] != ["--no-verify"]
        rest = argv[2:] if verify else argv[3:]
        child(argv[1], rest[0], rest[1:], verify)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1, help="runs per case (median shown)")
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    parser.add_argument("--no-verify", action="store_true",
                        help="time `python -m dynexport --no-verify` instead")
    parser.add_argument("script", nargs=argparse.REMAINDER,
                        help="-- SCRIPT.py [SCRIPT_ARGS...] (default: FlashOcc M0, both modes)")
    args = parser.parse_args(argv)
    script = args.script[1:] if args.script[:1] == ["--"] else args.script
    if script:
        script[0] = str(Path(script[0]).resolve())
    cases = {" ".join([Path(script[0]).name, *script[1:]]): script} if script else DEFAULT_CASES
    info = cpu_info()
    results = {case: [] for case in cases}
    for _ in range(args.runs):
        for case, script_args in cases.items():
            results[case].append(measure(script_args, verify=not args.no_verify))
            print(f"{case}: {results[case][-1]['wall_seconds']:.1f} s, ok="
                  f"{results[case][-1]['ok']}", file=sys.stderr)
    print(describe(info))
    print(", ".join(f"{k} {v}" for k, v in versions().items() if v) + "\n")
    print(table(results))
    print(step_table(results))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "versions": versions(),
                                         "load_average": os.getloadavg(),
                                         "results": results}, indent=1))


if __name__ == "__main__":
    main()

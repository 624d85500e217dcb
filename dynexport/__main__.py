"""`python -m dynexport`: parse the command line, run the pipeline, map the outcome to the
exit status of contract §1 (0 ok, 1 a stage/verification/hazard failed, 2 unusable input)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from dynexport.capture import CaptureError
from dynexport.coverage import coverage_table
from dynexport.errors import format_traceback
from dynexport.isolation import DEFAULT_DEADLINE, Isolation
from dynexport.names import BACKENDS, LAYOUTS, PRECISIONS
from dynexport.patches import patch_names
from dynexport.pipeline import Options, run_script, script_coverage
from dynexport.precision.keep_f32 import parse_location
from dynexport.runtimes import missing_device
from dynexport.script import ScriptError, load_script

EXIT_OK, EXIT_FAILED, EXIT_UNUSABLE = 0, 1, 2


class UsageError(Exception):
    """The command line itself is wrong."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one paragraph and exit 2, as for a bad script
        raise UsageError(f"{message}. Run `python -m dynexport --help` for the options; the "
                         "usage is `python -m dynexport [options] SCRIPT.py [SCRIPT_ARGS...]`.")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m dynexport",
        description="Export a PyTorch model described by SCRIPT.py to an ExportedProgram, ONNX "
                    "and OpenVINO IR, report every hazard and verify every runtime.")
    parser.add_argument("--out", type=Path, help="artifact folder "
                        "(default dynexport_out/<script stem>/)")
    parser.add_argument("--to", default=",".join(BACKENDS),
                        help="comma-separated targets among onnx,openvino (default both)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip verification (and eager PyTorch's run on the probe, which "
                        "only verification compares with)")
    parser.add_argument("--bench", action="store_true", help="also time eager and each runtime")
    parser.add_argument("--device", default="CPU", help="OpenVINO device to verify on (default "
                        "CPU; AUTO picks one); an absent device exits 2 after writing the IR")
    parser.add_argument("--static", action="store_true",
                        help="fix every dimension to the example's: IR that compiles for NPU")
    parser.add_argument("--precision", default="f32", choices=PRECISIONS,
                        help="OpenVINO precision to ship, timed and compared with f32 "
                        "(verification stays f32): bf16 hint, int8 (NNCF), fp16-weights")
    parser.add_argument("--accuracy-budget", type=float, default=1.0, metavar="POINTS",
                        help="--precision auto and int8: how many points of the script's "
                        "metric below eager f32 a precision may lose (int8 with a metric: NNCF's "
                        "accuracy control keeps in float the layers that cost more; default 1.0)")
    parser.add_argument("--keep-f32", action="append", default=[],
                        metavar="FILE:LINE[,FILE:LINE...]",
                        help="--precision bf16/f16/int8: keep the ops called at these lines in "
                        "f32 (the report's 'Where it diverges' table suggests them)")
    parser.add_argument("--no-patch", action="append", default=[], metavar="NAME[,NAME...]",
                        help="do not apply these known-library patches during capture (names "
                        "as the report's handled list gives them, e.g. torchvision.batched_nms)")
    parser.add_argument("--layout", default="",
                        help="serving repositories to write, among ovms,triton")
    parser.add_argument("--stage-timeout", type=float, default=DEFAULT_DEADLINE,
                        metavar="SECONDS", help="how long a conversion, verification or "
                        "benchmark child process may run before it is ended as hung and "
                        f"reported with its stack (default {DEFAULT_DEADLINE:g})")
    parser.add_argument("--debug", action="store_true", help="show tracebacks; keep a hung "
                        "child's whole Python stack next to the report")
    parser.add_argument("--mmdet3d", nargs=argparse.REMAINDER,
                        help="CONFIG [--checkpoint PATH] [--input-size HxW] [--cfg-options "
                        "KEY=VALUE ...]: export the detector of an mmdet3d config instead of a "
                        "script (the last option; needs the mmdet3d extra, see README)")
    parser.add_argument("script", nargs="?", help="SCRIPT.py defining get_model() and "
                        "get_inputs(); or `ops SCRIPT.py` for the operator coverage table alone, "
                        "or `sweep PATH...` for a model zoo (`sweep --help`)")
    parser.add_argument("script_args", nargs=argparse.REMAINDER,
                        help="passed to the script as sys.argv[1:]")
    return parser


def _target(args: argparse.Namespace) -> tuple:
    """What to load, its arguments and the loader: a SCRIPT.py, or an mmdet3d config."""
    if args.mmdet3d is None:
        if args.script is None:
            raise UsageError("the script is missing. The usage is `python -m dynexport [options] "
                             "SCRIPT.py [SCRIPT_ARGS...]`, or `--mmdet3d CONFIG` in place of "
                             "the script for an mmdet3d config")
        return args.script, args.script_args, load_script
    if not args.mmdet3d:
        raise UsageError("--mmdet3d needs the config: `python -m dynexport --mmdet3d CONFIG "
                         "[--checkpoint PATH]`")
    from dynexport.integrations.mmdet3d import load_config  # the extra is needed only here

    return args.mmdet3d[0], args.mmdet3d[1:], load_config


def _options(args: argparse.Namespace, target: str) -> Options:
    targets = tuple(t.strip() for t in args.to.split(",") if t.strip())
    unknown = [t for t in targets if t not in BACKENDS]
    if unknown or not targets:
        raise UsageError(f"--to {args.to!r} names unknown targets {unknown or '(none)'}. Use a "
                         "comma-separated list among onnx,openvino, e.g. `--to onnx`.")
    out = args.out or Path("dynexport_out") / Path(target).stem
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is an existing file, not a folder. Name a folder (it is "
                         "created if missing) or remove the file.")
    layouts = tuple(dict.fromkeys(x.strip() for x in args.layout.split(",") if x.strip()))
    if any(layout not in LAYOUTS for layout in layouts):
        raise UsageError(f"--layout {args.layout!r} names an unknown layout. Use a "
                         "comma-separated list among ovms,triton, e.g. `--layout ovms`.")
    keep_f32 = tuple(dict.fromkeys(x.strip() for value in args.keep_f32
                                   for x in value.split(",") if x.strip()))
    for location in keep_f32:
        try:
            parse_location(location)
        except ValueError as exc:
            raise UsageError(f"--keep-f32: {exc}. Name the lines as the report's 'Where it "
                             "diverges' table does, e.g. `--keep-f32 model.py:42,model.py:57`."
                             ) from exc
    if keep_f32 and args.precision in ("f32", "fp16-weights"):
        raise UsageError(f"--keep-f32 keeps lines in f32 under a reduced precision, and "
                         f"--precision {args.precision} computes everything in f32. Add "
                         "`--precision bf16` (or f16, int8, auto), or drop --keep-f32.")
    no_patch = tuple(dict.fromkeys(x.strip() for value in args.no_patch
                                   for x in value.split(",") if x.strip()))
    known = patch_names()
    if unknown_patches := [name for name in no_patch if name not in known]:
        raise UsageError(f"--no-patch names unknown patches {unknown_patches}. dynexport's "
                         f"patches are {', '.join(known)}; a script's own patches are turned "
                         "off by not registering them.")
    if not args.stage_timeout > 0:
        raise UsageError(f"--stage-timeout {args.stage_timeout:g} is not a positive number of "
                         "seconds. Give the time a child stage may take, e.g. "
                         "`--stage-timeout 3600`.")
    isolation = Isolation(deadline=args.stage_timeout, stacks_dir=out if args.debug else None)
    return Options(out_dir=out, targets=targets, verify=not args.no_verify, bench=args.bench,
                   device=args.device, precision=args.precision, layouts=layouts,
                   static=args.static, device_missing=missing_device(args.device),
                   accuracy_budget=args.accuracy_budget, isolation=isolation,
                   keep_f32=keep_f32, no_patch=no_patch)


def _ops(args: argparse.Namespace, console: Console) -> int:
    """`python -m dynexport ops SCRIPT.py [SCRIPT_ARGS...]`: the coverage table only."""
    if not args.script_args:
        raise UsageError("`ops` needs the script: `python -m dynexport ops SCRIPT.py`")
    rows = script_coverage(args.script_args[0], args.script_args[1:])
    console.print(coverage_table(rows))
    return EXIT_OK if all(row.onnx and row.openvino for row in rows) else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sweep"] and not Path("sweep").is_file():
        from dynexport.sweep.cli import main as sweep

        return sweep(argv[1:])
    console = Console(stderr=False)
    errors = Console(stderr=True)
    debug = "--debug" in argv
    try:
        args = _parser().parse_args(argv)
        if args.script == "ops" and not Path("ops").is_file():
            return _ops(args, console)
        target, target_args, loader = _target(args)
        options = _options(args, target)
        from dynexport.console import StageProgress

        with StageProgress(console, debug=args.debug) as progress:
            report = run_script(target, target_args, options, observer=progress,
                                loader=loader, debug=args.debug)
    except CaptureError as exc:
        errors.print(f"[bold red]dynexport:[/] {escape(str(exc))}", highlight=False,
                     soft_wrap=True)
        return EXIT_FAILED
    except (UsageError, ScriptError) as exc:
        errors.print(f"[bold red]dynexport:[/] {escape(str(exc))}", highlight=False,
                     soft_wrap=True)
        if debug:
            errors.print(format_traceback(exc), markup=False, highlight=False)
        return EXIT_UNUSABLE
    console.print(report)
    console.print(f"Artifacts and report: [bold]{options.out_dir}[/]")
    if options.device_missing:
        errors.print(f"[bold red]dynexport:[/] {escape(options.device_missing)}. The models "
                     f"were converted and written to {options.out_dir} (openvino/model.xml), but "
                     "nothing was compiled or verified on that device. Run them where it exists, "
                     "or pass `--device CPU` (or `--device AUTO`) to verify here.",
                     highlight=False, soft_wrap=True)
        return EXIT_UNUSABLE
    return EXIT_OK if report.ok else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())

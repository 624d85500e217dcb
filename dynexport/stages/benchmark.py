"""Benchmark stage (--bench): eager and every converted model timed (benchmark.py)."""

from __future__ import annotations

from dynexport.benchmark import BenchmarkRecord, time_artifact, time_eager
from dynexport.conversion import converted_models, program_signature
from dynexport.inputs import eager_call
from dynexport.names import BACKENDS
from dynexport.precision import PrecisionResult, variant_ir
from dynexport.script import Script
from dynexport.stage import ABSENT, Request, Run, Stage


def _benchmark(run: Run) -> list[BenchmarkRecord]:
    """Eager and every converted model (and the --precision variant) on the example."""
    script = run.result("load", Script)
    options = run.options
    records = [time_eager(eager_call(script.model, script.method), script.example)]
    signature = program_signature(run)
    records += [time_artifact(runtime, artifact, script.example, options.device,
                              isolation=options.isolation, signature=signature)
                for runtime, artifact in converted_models(run)]
    variant = run.result("precision", PrecisionResult)
    if variant is not None:
        records.append(time_artifact("openvino", variant_ir(run, variant), script.example,
                                     options.device, variant.openvino_config,
                                     variant.precision, isolation=options.isolation,
                                     signature=signature))
    return records


BENCHMARK_STAGE = Stage("benchmark", _benchmark, needs=("load",), needs_any=BACKENDS,
                        requested=lambda run: Request.skipped_unless(run.options.device_missing)
                        if run.options.bench else ABSENT)

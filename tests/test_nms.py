"""nms / batched_nms: eager kernel against an independent greedy-NMS reference, argument
checks, the fake kernel's data-dependent length, torch.export (strict and non-strict), and
dynexport.to_onnx (onnxruntime) / dynexport.to_openvino on inputs with different numbers of
kept boxes, including the runtimes' tie-breaking and threshold-equality semantics."""

import functools

import numpy as np
import onnxruntime as ort
import openvino as ov
import pytest
import torch

import dynexport
from dynexport.custom_ops.nms import batched_nms, nms

# Converts models through both exporters (seconds a test): `pytest -m "not slow"` skips it.
pytestmark = pytest.mark.slow

F32 = {"INFERENCE_PRECISION_HINT": "f32"}


# --- independent reference -----------------------------------------------------------------------

def pair_iou(a, b):
    """IoU of two (x1, y1, x2, y2) boxes in float32 arithmetic, no +1, as torchvision."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    w = max(np.float32(0), min(a[2], b[2]) - max(a[0], b[0]))
    h = max(np.float32(0), min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.float32(inter / union)


def reference_nms(boxes, scores, threshold):
    """Greedy NMS, one pair at a time: highest score first (ties: lower index), keep a box
    unless its IoU with an already kept box is > threshold (in float64)."""
    boxes, scores = np.asarray(boxes, np.float32), np.asarray(scores, np.float32)
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))  # stable
    kept = []
    for i in order:
        if all(not float(pair_iou(boxes[i], boxes[k])) > threshold for k in kept):
            kept.append(i)
    return np.array(kept, dtype=np.int64)


def reference_batched_nms(boxes, scores, idxs, threshold):
    """reference_nms within each category, merged by decreasing score (ties: lower index)."""
    boxes, scores, idxs = np.asarray(boxes), np.asarray(scores, np.float32), np.asarray(idxs)
    kept = []
    for category in np.unique(idxs):
        members = np.flatnonzero(idxs == category)
        kept += [members[k] for k in reference_nms(boxes[members], scores[members], threshold)]
    return np.array(sorted(kept, key=lambda i: (-float(scores[i]), i)), dtype=np.int64)


def random_boxes(n, seed, *, extent=100.0, size=(4.0, 30.0), integer=False):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, extent, (n, 2))
    wh = rng.uniform(*size, (n, 2))
    boxes = np.concatenate([xy, xy + wh], 1)
    if integer:  # coordinates on a grid: many IoUs exactly equal each other and thresholds
        boxes = np.round(boxes / 4)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    scores = rng.permutation(n) / max(n, 1) if not integer else rng.integers(0, 5, n) / 4
    return torch.tensor(boxes, dtype=torch.float32), torch.tensor(scores, dtype=torch.float32)


def assert_nms(keep, boxes, scores, threshold):
    assert keep.dtype == torch.int64
    np.testing.assert_array_equal(keep.numpy(), reference_nms(boxes, scores, threshold))


# --- eager ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("integer", [False, True])
def test_random_boxes_match_the_reference(seed, threshold, integer):
    boxes, scores = random_boxes(120, seed, integer=integer)
    assert_nms(nms(boxes, scores, threshold), boxes, scores, threshold)


def test_duplicates_and_ties():
    boxes = torch.tensor([[0, 0, 10, 10]] * 4 + [[20, 20, 30, 30]] * 2, dtype=torch.float32)
    scores = torch.tensor([0.5, 0.7, 0.7, 0.5, 0.7, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [1, 4]  # the lower index wins a tie
    # IoU of a duplicate is exactly 1, and 1 > 1 is false: nothing is suppressed
    assert nms(boxes, scores, 1.0).tolist() == [1, 2, 4, 5, 0, 3]


def test_all_suppressed_none_suppressed_and_empty():
    nested = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 9.5], [0.5, 0, 10, 10]])
    assert nms(nested, torch.tensor([0.1, 0.9, 0.5]), 0.5).tolist() == [1]
    apart = torch.tensor([[i * 10.0, 0, i * 10 + 5, 5] for i in range(5)])
    assert nms(apart, torch.tensor([0.1, 0.9, 0.5, 0.3, 0.2]), 0.0).tolist() == [1, 2, 3, 4, 0]
    empty = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert empty.dtype == torch.int64 and empty.shape == (0,)
    empty = batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
    assert empty.dtype == torch.int64 and empty.shape == (0,)


def test_iou_equal_to_the_threshold_is_kept_and_there_is_no_plus_one():
    a, b = [0, 0, 3, 1], [1, 0, 4, 1]  # intersection 2, union 4: IoU exactly 0.5
    boxes, scores = torch.tensor([a, b], dtype=torch.float32), torch.tensor([0.9, 0.8])
    assert nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert nms(boxes, scores, 0.49).tolist() == [0]
    # with +1 the IoU would be 6/10; it is 0.5, so 0.55 keeps both
    assert nms(boxes, scores, 0.55).tolist() == [0, 1]


def test_threshold_above_one_and_float64():
    boxes, scores = random_boxes(60, 7)
    assert nms(boxes, scores, 1.5).tolist() == torch.argsort(scores, descending=True).tolist()
    keep = nms(boxes.double(), scores.double(), 0.4)
    assert keep.dtype == torch.int64
    np.testing.assert_array_equal(keep.numpy(), reference_nms(boxes, scores, 0.4))


def test_requires_grad_inputs_and_negative_scores():
    boxes, scores = random_boxes(40, 8)
    keep = nms(boxes.requires_grad_(), -scores.requires_grad_(), 0.3)
    assert_nms(keep, boxes.detach(), -scores.detach(), 0.3)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("classes", [1, 3, 80])
def test_batched_nms_matches_per_category_reference(seed, classes):
    boxes, scores = random_boxes(400, seed, size=(10.0, 60.0))
    idxs = torch.from_numpy(np.random.default_rng(seed + 10).integers(0, classes, 400))
    keep = batched_nms(boxes, scores, idxs, 0.5)
    assert keep.dtype == torch.int64
    np.testing.assert_array_equal(keep.numpy(), reference_batched_nms(boxes, scores, idxs, 0.5))


def test_batched_nms_never_suppresses_across_categories_even_with_negative_coordinates():
    boxes = torch.tensor([[-50.0, -50, -10, -10]] * 3 + [[-48.0, -50, -10, -10]])
    keep = batched_nms(boxes, torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([2, 0, 2, 1]), 0.5)
    assert keep.tolist() == [0, 1, 3]


def test_fake_kernel_gives_a_data_dependent_length():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    with FakeTensorMode(shape_env=ShapeEnv()) as mode:
        boxes, scores = mode.from_tensor(torch.rand(7, 4)), mode.from_tensor(torch.rand(7))
        keep = torch.ops.dynexport.nms.default(boxes, scores, 0.5)
    assert keep.dtype == torch.int64 and keep.dim() == 1
    assert isinstance(keep.shape[0], torch.SymInt)  # unbacked, not 7


def test_opcheck_registrations():
    boxes, scores = random_boxes(30, 9)
    results = torch.library.opcheck(torch.ops.dynexport.nms.default, (boxes, scores, 0.5),
                                    test_utils=("test_schema", "test_faketensor"))
    assert set(results.values()) == {"SUCCESS"}


def _boxes_scores(n=5):
    return random_boxes(n, 0)


@pytest.mark.parametrize("call, error, words", [
    (lambda b, s: nms(b[:, :3], s, 0.5), ValueError, "boxes must be (N, 4)"),
    (lambda b, s: nms(b[None], s, 0.5), ValueError, "boxes must be (N, 4)"),
    (lambda b, s: nms(b, s[None], 0.5), ValueError, "scores must be 1-D"),
    (lambda b, s: nms(b, s[:-1], 0.5), ValueError, "scores must have one entry per box"),
    (lambda b, s: nms(b, s.double(), 0.5), TypeError, "scores must have the dtype of boxes"),
    (lambda b, s: nms(b.long(), s.long(), 0.5), TypeError, "boxes must be a floating"),
    (lambda b, s: nms(b, s, -0.1), ValueError, "iou_threshold"),
    (lambda b, s: nms(b, s, float("nan")), ValueError, "iou_threshold"),
    (lambda b, s: nms(b, s, "0.5"), TypeError, "iou_threshold"),
    (lambda b, s: batched_nms(b, s, torch.zeros(4, dtype=torch.int64), 0.5), ValueError,
     "idxs must have one entry per box"),
    (lambda b, s: batched_nms(b, s, torch.zeros(5), 0.5), TypeError, "idxs must be an integer"),
    (lambda b, s: batched_nms(b, s, torch.zeros(5, 1, dtype=torch.int64), 0.5), ValueError,
     "idxs must be 1-D"),
    (lambda b, s: batched_nms(b[:, :2], s, torch.zeros(5, dtype=torch.int64), 0.5), ValueError,
     "boxes must be (N, 4)"),
])
def test_bad_input_raises_a_clear_error(call, error, words):
    with pytest.raises(error) as info:
        call(*_boxes_scores())
    assert words in str(info.value)


def test_direct_op_call_checks_too():
    boxes, scores = _boxes_scores()
    with pytest.raises(ValueError, match="scores must have one entry per box"):
        torch.ops.dynexport.nms.default(boxes, scores[:3], 0.5)


# --- export and conversions ----------------------------------------------------------------------

class Detect(torch.nn.Module):
    """nms on data, then the kept indices select boxes: two outputs of dynamic length."""

    def __init__(self, threshold: float = 0.5):
        super().__init__()
        self.threshold = threshold

    def forward(self, boxes, scores):
        keep = nms(boxes, scores, self.threshold)
        return keep, boxes[keep]


class DetectBatched(torch.nn.Module):
    def forward(self, boxes, scores, labels):
        keep = batched_nms(boxes, scores, labels, 0.5)
        return keep, boxes[keep], labels[keep]


def export(module, example, strict=True):
    n = torch.export.Dim("N", min=0)
    return torch.export.export(module, example, dynamic_shapes=tuple({0: n} for _ in example),
                               strict=strict)


EXAMPLE = random_boxes(50, 0)
# other sizes and other numbers of kept boxes than the example, and no boxes at all
PROBES = {"few": random_boxes(30, 1, size=(20.0, 60.0)), "many": random_boxes(300, 2),
          "empty": (torch.zeros(0, 4), torch.zeros(0))}


@functools.cache
def probe_reference(probe):
    return reference_nms(*PROBES[probe], 0.5)


def test_probes_keep_different_numbers_of_boxes():
    counts = {len(probe_reference(p)) for p in PROBES}
    assert len(counts) == len(PROBES)


@pytest.fixture(scope="module", params=[True, False], ids=["strict", "non_strict"])
def program(request):
    return export(Detect(), EXAMPLE, strict=request.param)


def test_export_keeps_the_op_with_a_dynamic_length(program):
    targets = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert torch.ops.dynexport.nms.default in targets
    keep_node = next(n for n in program.graph.nodes if n.target == torch.ops.dynexport.nms.default)
    length = keep_node.meta["val"].shape[0]
    assert isinstance(length, torch.SymInt) and str(length).startswith("u")
    for name, probe in PROBES.items():
        keep, kept_boxes = program.module()(*probe)
        np.testing.assert_array_equal(keep.numpy(), probe_reference(name))
        torch.testing.assert_close(kept_boxes, probe[0][keep])


def run_onnxruntime(path, inputs, threads, repeats=3):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs, strict=True)}
    return [session.run(None, feed) for _ in range(repeats)]


def run_openvino(model, inputs, threads, repeats=3):
    compiled = ov.Core().compile_model(model, "CPU", {**F32, "INFERENCE_NUM_THREADS": threads})
    return [[out.copy() for out in compiled([t.numpy() for t in inputs]).to_tuple()]
            for _ in range(repeats)]


def assert_runs(runs, inputs, expected):
    """Every repeated run gives the reference's indices and exactly the selected rows."""
    for keep, *selected in runs:
        assert keep.dtype == np.int64
        np.testing.assert_array_equal(keep, expected)
        for rows, source in zip(selected, inputs, strict=False):
            np.testing.assert_array_equal(rows, source.numpy()[expected])


@pytest.fixture(scope="module")
def onnx_model(program, tmp_path_factory):
    return dynexport.to_onnx(program, tmp_path_factory.mktemp("onnx") / "model.onnx")


@pytest.fixture(scope="module")
def openvino_model(program):
    return dynexport.to_openvino(program)


@pytest.mark.parametrize("threads", [2, 4])
@pytest.mark.parametrize("probe", list(PROBES))
def test_onnxruntime_matches_the_reference(onnx_model, threads, probe):
    inputs = PROBES[probe]
    assert_runs(run_onnxruntime(onnx_model, inputs, threads), inputs, probe_reference(probe))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("probe", list(PROBES))
def test_openvino_matches_the_reference(openvino_model, threads, probe):
    inputs = PROBES[probe]
    assert_runs(run_openvino(openvino_model, inputs, threads), inputs, probe_reference(probe))


def test_the_models_use_the_standard_nms_ops(onnx_model, openvino_model):
    import onnx

    assert "NonMaxSuppression" in {n.op_type for n in onnx.load(str(onnx_model)).graph.node}
    assert "NonMaxSuppression" in {op.get_type_name() for op in openvino_model.get_ordered_ops()}
    assert openvino_model.outputs[0].get_partial_shape().is_dynamic


def test_plain_conversions_need_the_translations(tmp_path):
    """No portable decomposition exists, so the plain library calls cannot lower the op by
    themselves. Given the registry's translations they reach them (with no decomposition to
    apply first, OpenVINO needs no special decoder input for this op)."""
    from dynexport.custom_ops import registry

    program = export(Detect(), EXAMPLE, strict=False)
    with pytest.raises(Exception, match="dynexport.nms.default"):
        ov.convert_model(program)
    with pytest.raises(Exception, match="dynexport.nms"):
        torch.onnx.export(program, dynamo=True, verbose=False)
    # a fresh program: the failed torch.onnx re-trace left an unbacked symbol pending in the
    # first one's ShapeEnv, and OpenVINO's re-trace then fails (dynexport's backends isolate it)
    program = export(Detect(), EXAMPLE, strict=False)
    model = ov.convert_model(program, extension=registry.openvino_extensions())
    torch.onnx.export(program, dynamo=True, verbose=False,
                      custom_translation_table=registry.onnx_translation_table()
                      ).save(tmp_path / "m.onnx")
    inputs = PROBES["many"]
    assert_runs(run_openvino(model, inputs, 2, repeats=1), inputs, probe_reference("many"))
    assert_runs(run_onnxruntime(tmp_path / "m.onnx", inputs, 2, repeats=1), inputs,
                probe_reference("many"))


# Semantics that differ between the raw runtimes and torchvision, removed by the translations:
# onnxruntime tests IoU > t, OpenVINO IoU >= t; both break ties by the lower index.
EDGE_CASES = {
    "iou_equals_threshold": (torch.tensor([[0, 0, 3, 1], [1, 0, 4, 1]] * 2, dtype=torch.float32),
                             torch.tensor([0.9, 0.8, 0.7, 0.6]), 0.5),
    "duplicates_at_threshold_1": (torch.tensor([[0, 0, 1, 1]] * 4 + [[5, 5, 6, 6]] * 2,
                                               dtype=torch.float32),
                                  torch.tensor([0.5, 0.7, 0.7, 0.5, 0.7, 0.1]), 1.0),
    "ties_threshold_0": (torch.tensor([[i * 2, 0, i * 2 + 1, 1] for i in range(8)] + [[0, 0, 1, 1]],
                                      dtype=torch.float32),
                         torch.tensor([0.5, 0.7, 0.7, 0.5, 0.7, 0.1, 0.5, 0.7, 0.7]), 0.0),
    "threshold_not_a_float32": (*random_boxes(150, 3, integer=True), 0.7),
    "threshold_above_1": (*random_boxes(40, 4), 2.0),
    "grid_boxes_one_third": (*random_boxes(150, 5, integer=True), 1 / 3),
    "zero_area_boxes": (torch.tensor([[1.0, 1, 1, 1]] * 2 + [[0, 0, 2, 2], [1, 0, 1, 5]]),
                        torch.tensor([0.9, 0.8, 0.7, 0.6]), 0.0),
}
# Documented difference: torchvision does not normalise x2 < x1 (such a box's area is the
# product of two negative sides and its overlap 0); both runtimes swap the corners. Such
# boxes are outside nms's contract (x1 <= x2, y1 <= y2), as they are outside torchvision's.
FLIPPED = (torch.tensor([[3.0, 1, 0, 0], [0, 0, 3, 1]]), torch.tensor([0.9, 0.8]), 0.5)
CASES = {**EDGE_CASES, "flipped": FLIPPED}


class ManyThresholds(torch.nn.Module):
    """One nms per case, each with its own threshold: one export for every case."""

    def forward(self, boxes: list, scores: list):
        return tuple(nms(b, s, case[2]) for b, s, case in zip(boxes, scores, CASES.values(),
                                                               strict=True))


@pytest.fixture(scope="module")
def edge_outputs(tmp_path_factory):
    boxes, scores = [case[0] for case in CASES.values()], [case[1] for case in CASES.values()]
    dims = [{0: torch.export.Dim(f"N{i}", min=0)} for i in range(len(CASES))]
    program = torch.export.export(ManyThresholds(), (boxes, scores), dynamic_shapes=(dims, dims),
                                  strict=False)
    path = dynexport.to_onnx(program, tmp_path_factory.mktemp("edge") / "m.onnx")
    inputs = (*boxes, *scores)  # the flattened order of the graph inputs
    results = {"onnxruntime": run_onnxruntime(path, inputs, 2, repeats=2),
               "openvino": run_openvino(dynexport.to_openvino(program), inputs, 2, repeats=2)}
    return {runtime: {name: [run[i] for run in runs] for i, name in enumerate(CASES)}
            for runtime, runs in results.items()}


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("case", list(EDGE_CASES))
def test_runtimes_follow_torchvision_semantics(edge_outputs, runtime, case):
    boxes, scores, threshold = EDGE_CASES[case]
    expected = reference_nms(boxes, scores, threshold)
    np.testing.assert_array_equal(nms(boxes, scores, threshold).numpy(), expected)
    for keep in edge_outputs[runtime][case]:
        np.testing.assert_array_equal(keep, expected)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_flipped_boxes_are_a_documented_difference(edge_outputs, runtime):
    assert nms(*FLIPPED).tolist() == [0, 1]
    assert [keep.tolist() for keep in edge_outputs[runtime]["flipped"]] == [[0], [0]]


def test_batched_nms_exports_and_converts(tmp_path):
    example = (*random_boxes(60, 0, size=(10.0, 60.0)), torch.randint(0, 3, (60,)))
    program = export(DetectBatched(), example, strict=True)
    onnx_path = dynexport.to_onnx(program, tmp_path / "m.onnx")
    ov_model = dynexport.to_openvino(program)
    for n, classes, seed in ((200, 80, 1), (25, 2, 2), (0, 1, 3)):
        boxes, scores = random_boxes(n, seed, size=(10.0, 60.0))
        labels = torch.from_numpy(np.random.default_rng(seed).integers(0, classes, n))
        inputs = (boxes, scores, labels)
        expected = reference_batched_nms(boxes, scores, labels, 0.5)
        np.testing.assert_array_equal(program.module()(*inputs)[0].numpy(), expected)
        wanted = (boxes, labels)  # the selected rows the model returns besides keep
        assert_runs(run_onnxruntime(onnx_path, inputs, 2, repeats=2), wanted, expected)
        assert_runs(run_openvino(ov_model, inputs, 2, repeats=2), wanted, expected)


TORCHVISION_STAND_IN = """
import numpy as np, onnxruntime as ort, openvino as ov, torch, dynexport
from dynexport.custom_ops.nms import register_torchvision_nms

assert not register_torchvision_nms()  # no torchvision::nms op yet
# A stand-in for torchvision's C++ op, with its schema, and torchvision's kernel semantics
# through dynexport's kernel (torchvision itself does not load with this torch build).
@torch.library.custom_op("torchvision::nms", mutates_args=(),
                         schema="(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
def tv_nms(dets, scores, iou_threshold):
    return torch.ops.dynexport.nms.default(dets, scores, iou_threshold)
@tv_nms.register_fake
def _(dets, scores, iou_threshold):
    return dets.new_empty((torch.library.get_ctx().new_dynamic_size(),), dtype=torch.int64)

assert register_torchvision_nms() and register_torchvision_nms()  # idempotent
class M(torch.nn.Module):
    def forward(self, boxes, scores):
        return torch.ops.torchvision.nms(boxes, scores, 0.5)
n = torch.export.Dim("N", min=0)
boxes = torch.tensor([[0, 0, 3, 1], [1, 0, 4, 1], [0, 0, 3, 1], [5, 5, 6, 6]], dtype=torch.float32)
scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
program = torch.export.export(M(), (boxes, scores), dynamic_shapes=({0: n}, {0: n}))
path = dynexport.to_onnx(program, "FOLDER/tv.onnx")
session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
print(session.run(None, {"boxes": boxes.numpy(), "scores": scores.numpy()})[0].tolist())
compiled = ov.Core().compile_model(dynexport.to_openvino(program), "CPU",
                                   {"INFERENCE_PRECISION_HINT": "f32"})
print(compiled([boxes.numpy(), scores.numpy()])[0].tolist())
"""


def test_torchvision_nms_nodes_get_the_same_translations(tmp_path):
    """Run in a subprocess: the stand-in op must not leak into other tests' process."""
    import subprocess
    import sys

    script = TORCHVISION_STAND_IN.replace("FOLDER", str(tmp_path))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # IoU(0, 1) is exactly 0.5: kept; box 2 duplicates box 0: suppressed
    assert result.stdout.split("\n")[-3:-1] == ["[0, 1, 3]", "[0, 1, 3]"]

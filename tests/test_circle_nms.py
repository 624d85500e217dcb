"""circle_nms: the kernel against a plain-Python port of CenterPoint's circle_nms_jit.circle_nms
(+ `_circle_nms`'s post_max_size cut), the fixed-size padded form, and dynexport.to_onnx
(onnxruntime) / dynexport.to_openvino on two det counts, ties and distances exactly at the
threshold, at 1 and 8 threads."""

import numpy as np
import pytest
import torch

import dynexport
from dynexport.custom_ops.circle_nms import circle_nms, padded_circle_nms
from dynexport.runtimes import DEFAULT_OPENVINO_CONFIG, OnnxRuntimeRunner, OpenVINORunner


def reference(dets: np.ndarray, thresh: float, post_max_size: int) -> np.ndarray:
    """CenterPoint's loop, one pair at a time, on float32 dets: order by decreasing score
    (a stable ascending argsort reversed, so equal scores: higher index first); a squared
    distance in float32, compared with thresh in float64 (numba promotes the comparison)."""
    dets = np.asarray(dets, np.float32)
    x, y, scores = dets[:, 0], dets[:, 1], dets[:, 2]
    order = np.argsort(scores, kind="stable")[::-1]
    suppressed = [False] * len(dets)
    keep = []
    for a in range(len(order)):
        i = order[a]
        if suppressed[i]:
            continue
        keep.append(int(i))
        for b in range(a + 1, len(order)):
            j = order[b]
            if suppressed[j]:
                continue
            dist = (x[i] - x[j]) ** 2 + (y[i] - y[j]) ** 2
            if float(dist) <= thresh:
                suppressed[j] = True
    return np.array(keep[:post_max_size], dtype=np.int64)


def random_dets(n: int, seed: int, *, grid: bool = False) -> torch.Tensor:
    """Centres in a 20 m square (grid: integer metres, so squared distances are exact and
    many sit exactly at an integer threshold), scores with some ties."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 20
    if grid:
        xy = torch.floor(xy)
    scores = torch.round(torch.rand(n, 1, generator=g) * 40) / 40   # ~40 levels: ties
    return torch.cat([xy, scores], 1)


@pytest.mark.parametrize("n, thresh, post_max_size, grid", [
    (80, 4.0, 83, False), (80, 4.0, 83, True), (200, 1.0, 30, True), (50, 0.0, 83, True),
    (50, 1000.0, 83, False), (1, 4.0, 83, False), (0, 4.0, 83, False), (60, 2.0, 0, False),
    (60, 0.175, 83, False),
])
def test_matches_centerpoint(n, thresh, post_max_size, grid):
    dets = random_dets(n, seed=n, grid=grid)
    expected = reference(dets.numpy(), thresh, post_max_size)
    np.testing.assert_array_equal(circle_nms(dets, thresh, post_max_size).numpy(), expected)
    padded = padded_circle_nms(dets, thresh, post_max_size).numpy()
    assert padded.shape == (n,)
    np.testing.assert_array_equal(padded[:len(expected)], expected)
    assert (padded[len(expected):] == -1).all()


def test_float64_dets_are_judged_in_float32():
    dets = random_dets(70, 3).double() + 1e-9
    np.testing.assert_array_equal(circle_nms(dets, 3.0).numpy(),
                                  reference(dets.numpy(), 3.0, 83))


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="squared distance"):
        circle_nms(random_dets(4, 0), -1.0)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        circle_nms(torch.zeros(4, 4), 1.0)
    with pytest.raises(TypeError, match="floating"):
        circle_nms(torch.zeros(4, 3, dtype=torch.int64), 1.0)


def test_opcheck():
    torch.library.opcheck(torch.ops.dynexport.circle_nms.default, (random_dets(30, 1), 4.0, 10),
                          test_utils=("test_schema", "test_faketensor"))


class Suppress(torch.nn.Module):
    def __init__(self, thresh: float, post_max_size: int, padded: bool):
        super().__init__()
        self.thresh, self.post_max_size, self.padded = thresh, post_max_size, padded

    def forward(self, dets):
        if self.padded:
            return padded_circle_nms(dets, self.thresh, self.post_max_size)
        return circle_nms(dets, self.thresh, self.post_max_size)


@pytest.mark.parametrize("strict", [False, True])
def test_export_gives_a_data_dependent_length(strict):
    program = torch.export.export(Suppress(4.0, 83, padded=False), (random_dets(40, 2),),
                                  dynamic_shapes=({0: torch.export.Dim("n", min=2)},),
                                  strict=strict)
    output = next(n for n in program.graph.nodes if n.op == "output").args[0][0]
    assert isinstance(output.meta["val"].shape[0], torch.SymInt)


@pytest.mark.slow
@pytest.mark.parametrize("thresh, post_max_size, padded", [
    (4.0, 83, False), (1.0, 20, True), (0.175, 83, False)])
def test_onnxruntime_and_openvino_match_centerpoint(tmp_path, thresh, post_max_size, padded):
    model = Suppress(thresh, post_max_size, padded)
    program = dynexport.export(model, (random_dets(60, 4),),
                               dynamic_shapes=({0: torch.export.Dim("n", min=2)},))
    dynexport.to_onnx(program, tmp_path / "circle_nms.onnx")
    ov_model = dynexport.to_openvino(program)
    for n, seed, grid in ((60, 4, False), (230, 5, True)):
        dets = random_dets(n, seed, grid=grid)
        expected = reference(dets.numpy(), thresh, post_max_size)
        if padded:
            expected = np.concatenate([expected, np.full(n - len(expected), -1, np.int64)])
        for threads in (1, 8):
            for runner in (OnnxRuntimeRunner(tmp_path / "circle_nms.onnx", threads=threads,
                                             spin=False),
                           OpenVINORunner(ov_model, "CPU", {**DEFAULT_OPENVINO_CONFIG,
                                                            "INFERENCE_NUM_THREADS": threads})):
                np.testing.assert_array_equal(runner.run([dets.numpy()])[0], expected,
                                              err_msg=f"{runner.name}, {threads} threads")

"""deform_conv2d: eager kernel, autograd, fake kernel, argument checks, and the four ways out
(dynexport.to_onnx, dynexport.to_openvino, plain torch.onnx.export, plain
openvino.convert_model), each against an independent float64 NumPy reference."""


import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov
import pytest
import torch
import torch.nn.functional as F

import dynexport
from dynexport.custom_ops.deform_conv import deform_conv2d

# Converts models through both exporters (seconds a test): `pytest -m "not slow"` skips it.
pytestmark = pytest.mark.slow

F32 = {"INFERENCE_PRECISION_HINT": "f32"}


# --- independent references ----------------------------------------------------------------------

def _bilinear_zero_padded(image, y, x):
    """One sample of a 2-D image, torchvision's rule: 0 outside (-1, H) × (-1, W), and each of
    the four neighbours that lies outside the image counts as 0."""
    height, width = image.shape
    if y <= -1 or y >= height or x <= -1 or x >= width:
        return 0.0
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    value = 0.0
    for row, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for col, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= row < height and 0 <= col < width:
                value += wy * wx * image[row, col]
    return value


def loop_reference(x, offset, weight, bias=None, stride=(1, 1), padding=(0, 0),
                   dilation=(1, 1), mask=None):
    """Deformable convolution one sample at a time, in float64 (small sizes only)."""
    x, offset, weight = (np.asarray(t, np.float64) for t in (x, offset, weight))
    batch, channels = x.shape[:2]
    out_channels, cin_g, kh, kw = weight.shape
    taps = kh * kw
    per_offset_group = channels // (offset.shape[1] // (2 * taps))
    out_h, out_w = offset.shape[2:]
    columns = np.zeros((batch, channels, taps, out_h, out_w))
    for b, c, i, j, oh, ow in np.ndindex(batch, channels, kh, kw, out_h, out_w):
        g, k = c // per_offset_group, i * kw + j
        y = oh * stride[0] - padding[0] + i * dilation[0] + offset[b, 2 * (g * taps + k), oh, ow]
        xx = ow * stride[1] - padding[1] + j * dilation[1] + offset[b, 2 * (g * taps + k) + 1,
                                                                    oh, ow]
        value = _bilinear_zero_padded(x[b, c], y, xx)
        if mask is not None:
            value *= mask[b, g * taps + k, oh, ow]
        columns[b, c, k, oh, ow] = value
    return _convolve_columns(columns, weight, bias)


def _convolve_columns(columns, weight, bias):
    """out[b, o] = Σ_{c in o's group, k} weight[o, c, k] · columns[b, c, k] (+ bias[o])."""
    batch, channels, taps, out_h, out_w = columns.shape
    out_channels, cin_g = weight.shape[:2]
    groups = channels // cin_g
    blocks = columns.reshape(batch, groups, cin_g * taps, out_h * out_w)
    kernels = weight.reshape(groups, out_channels // groups, cin_g * taps)
    out = np.matmul(kernels[None], blocks).reshape(batch, out_channels, out_h, out_w)
    return out if bias is None else out + np.asarray(bias, np.float64).reshape(1, -1, 1, 1)


def vector_reference(x, offset, weight, bias=None, stride=(1, 1), padding=(0, 0),
                     dilation=(1, 1), mask=None):
    """The same rule with NumPy arrays per (offset group, tap), for model-sized cases."""
    x, offset, weight = (np.asarray(t, np.float64) for t in (x, offset, weight))
    batch, channels, height, width = x.shape
    kh, kw = weight.shape[2:]
    taps = kh * kw
    offset_groups = offset.shape[1] // (2 * taps)
    per_group = channels // offset_groups
    out_h, out_w = offset.shape[2:]
    oh = np.arange(out_h)[:, None]
    ow = np.arange(out_w)[None, :]
    bidx = np.arange(batch)[:, None, None]
    columns = np.zeros((batch, channels, taps, out_h, out_w))
    for g, i, j in np.ndindex(offset_groups, kh, kw):
        k = i * kw + j
        image = x[:, g * per_group:(g + 1) * per_group].transpose(0, 2, 3, 1)  # channels last
        y = oh * stride[0] - padding[0] + i * dilation[0] + offset[:, 2 * (g * taps + k)]
        xx = ow * stride[1] - padding[1] + j * dilation[1] + offset[:, 2 * (g * taps + k) + 1]
        y0, x0 = np.floor(y), np.floor(xx)
        value = np.zeros((batch, out_h, out_w, per_group))
        for row, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
            for col, wx in ((x0, 1 - (xx - x0)), (x0 + 1, xx - x0)):
                inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
                r = np.clip(row, 0, height - 1).astype(np.int64)
                s = np.clip(col, 0, width - 1).astype(np.int64)
                picked = image[bidx, r, s]  # (B, oH, oW, channels)
                value += np.where(inside, wy * wx, 0.0)[..., None] * picked
        if mask is not None:
            value *= mask[:, g * taps + k][..., None]
        columns[:, g * per_group:(g + 1) * per_group, k] = value.transpose(0, 3, 1, 2)
    return _convolve_columns(columns, weight, bias)


# --- cases ---------------------------------------------------------------------------------------

def pair(value):
    return value if isinstance(value, tuple) else (value, value)


def out_size(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def make_case(seed, *, batch=2, channels=4, size=(7, 6), out_channels=6, kernel=(3, 3),
              groups=1, offset_groups=1, stride=(1, 1), padding=(1, 1), dilation=(1, 1),
              modulated=True, bias=True, scale=1.5, dtype=torch.float32):
    """Random tensors; stride/padding/dilation stay as given (int or pair) for the call."""
    g = torch.Generator().manual_seed(seed)
    sh, sw = pair(stride)
    (ph, pw), (dh, dw) = pair(padding), pair(dilation)
    out_h = out_size(size[0], kernel[0], sh, ph, dh)
    out_w = out_size(size[1], kernel[1], sw, pw, dw)
    taps = kernel[0] * kernel[1]
    return dict(
        input=torch.randn(batch, channels, *size, generator=g, dtype=dtype),
        offset=torch.randn(batch, 2 * offset_groups * taps, out_h, out_w, generator=g,
                           dtype=dtype) * scale,
        weight=torch.randn(out_channels, channels // groups, *kernel, generator=g, dtype=dtype),
        bias=torch.randn(out_channels, generator=g, dtype=dtype) if bias else None,
        stride=stride, padding=padding, dilation=dilation,
        mask=torch.rand(batch, offset_groups * taps, out_h, out_w, generator=g, dtype=dtype)
        if modulated else None)


def reference_of(case, reference=loop_reference):
    arrays = {k: (v.detach().numpy() if isinstance(v, torch.Tensor) else v)
              for k, v in case.items()}
    return reference(arrays["input"], arrays["offset"], arrays["weight"], arrays["bias"],
                     pair(arrays["stride"]), pair(arrays["padding"]), pair(arrays["dilation"]),
                     arrays["mask"])


CASES = {
    "dcn_v2_plain": dict(),
    "dcn_v1": dict(modulated=False, bias=False),
    "groups_offset_groups_geometry": dict(channels=4, groups=2, offset_groups=2, stride=(2, 1),
                                          padding=(1, 2), dilation=(1, 2)),
    "offset_groups_4_kernel_2x3": dict(channels=8, out_channels=4, kernel=(2, 3),
                                       offset_groups=4, padding=(0, 1), stride=2),
    "depthwise_v1": dict(channels=4, out_channels=8, groups=4, offset_groups=2,
                         modulated=False, dilation=(2, 1), padding=(2, 1)),
    "far_outside": dict(scale=6.0, size=(5, 4), offset_groups=2),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_eager_matches_the_loop_reference(name):
    case = make_case(1, **CASES[name])
    out = deform_conv2d(**case)
    np.testing.assert_allclose(out.numpy(), reference_of(case), rtol=1e-5, atol=1e-5)


def test_vector_reference_agrees_with_the_loop_reference():
    for name in ("groups_offset_groups_geometry", "far_outside", "offset_groups_4_kernel_2x3"):
        case = make_case(2, **CASES[name])
        np.testing.assert_allclose(reference_of(case, vector_reference), reference_of(case),
                                   rtol=1e-12, atol=1e-12)


def test_int_arguments_are_pairs():
    case = make_case(3, stride=(2, 2), padding=(1, 1), dilation=(2, 2))
    pairs = deform_conv2d(**case)
    ints = deform_conv2d(**{**case, "stride": 2, "padding": 1, "dilation": 2})
    torch.testing.assert_close(ints, pairs, rtol=0, atol=0)


@pytest.mark.parametrize("groups, stride, padding, dilation",
                         [(1, 1, 1, 1), (2, (2, 1), (0, 2), (2, 1)), (4, 2, 1, 2)])
def test_zero_offsets_and_unit_mask_are_a_plain_convolution(groups, stride, padding, dilation):
    case = make_case(4, channels=8, out_channels=8, groups=groups, offset_groups=2,
                     size=(9, 8), stride=stride, padding=padding, dilation=dilation)
    expected = F.conv2d(case["input"], case["weight"], case["bias"], stride, padding, dilation,
                        groups)
    zero = torch.zeros_like(case["offset"])
    torch.testing.assert_close(deform_conv2d(**{**case, "offset": zero, "mask": None}),
                               expected, rtol=1e-5, atol=1e-5)
    ones = torch.ones_like(case["mask"])
    torch.testing.assert_close(deform_conv2d(**{**case, "offset": zero, "mask": ones}),
                               expected, rtol=1e-5, atol=1e-5)


def border_case():
    """A 1x1 kernel whose samples sit exactly at and around the borders of a 4x5 image: the
    sample rows and columns run through -1.5, -1, -0.75, -0.25, 0, size-1, size-0.5,
    size-0.25, size, size+0.5 (padding (3, 2) gives a 10x9 output to hold them)."""
    height, width = 4, 5
    ys = np.array([-1.5, -1.0, -0.75, -0.25, 0.0, height - 1, height - 0.5, height - 0.25,
                   height, height + 0.5])
    xs = np.array([-1.5, -1.0, -0.75, -0.25, 0.0, width - 1, width - 0.5, width - 0.25,
                   width, width + 0.5])
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    g = torch.Generator().manual_seed(5)
    image = torch.randn(1, 2, height, width, generator=g)
    out_h, out_w = height + 2 * 3, width + 2 * 2
    offset = np.zeros((1, 2, out_h, out_w), np.float32)
    oh, ow = np.meshgrid(np.arange(out_h) - 3, np.arange(out_w) - 2, indexing="ij")
    offset[0, 0] = gy[:out_h, :out_w] - oh
    offset[0, 1] = gx[:out_h, :out_w] - ow
    return dict(input=image, offset=torch.from_numpy(offset),
                weight=torch.randn(3, 2, 1, 1, generator=g), bias=None, stride=(1, 1),
                padding=(3, 2), dilation=(1, 1), mask=None)


def test_border_samples_follow_torchvision():
    case = border_case()
    np.testing.assert_allclose(deform_conv2d(**case).numpy(), reference_of(case),
                               rtol=1e-6, atol=1e-6)


def test_float64_and_gradcheck():
    case = make_case(6, batch=1, channels=4, groups=2, offset_groups=2, size=(5, 4),
                     out_channels=2, kernel=(2, 2), stride=(2, 1), dtype=torch.float64)
    out = deform_conv2d(**case)
    assert out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), reference_of(case), rtol=1e-10, atol=1e-10)
    tensors = [case[k].requires_grad_() for k in ("input", "offset", "weight", "bias", "mask")]

    def call(x, offset, weight, bias, mask):
        return deform_conv2d(x, offset, weight, bias, case["stride"], case["padding"],
                             case["dilation"], mask)

    assert torch.autograd.gradcheck(call, tensors, fast_mode=True)


def test_gradient_of_input_only():
    case = make_case(7, modulated=False, bias=False)
    case["input"].requires_grad_()
    deform_conv2d(**case).sum().backward()
    assert case["input"].grad.shape == case["input"].shape and case["offset"].grad is None


def test_opcheck_registrations():
    case = make_case(8, batch=1, channels=4, groups=2, offset_groups=2, size=(4, 3),
                     out_channels=2, kernel=(2, 2), dtype=torch.float64)
    case["input"].requires_grad_()
    case["offset"].requires_grad_()
    args = (case["input"], case["offset"], case["weight"], case["bias"], list(case["stride"]),
            list(case["padding"]), list(case["dilation"]), case["mask"], 2, 2)
    # The test_aot_dispatch_* checks are left out: ~20 s on this machine, and tracing is
    # what the export tests below do.
    tests = ("test_schema", "test_autograd_registration", "test_faketensor")
    results = torch.library.opcheck(torch.ops.dynexport.deform_conv2d.default, args,
                                    test_utils=tests)
    assert set(results.values()) == {"SUCCESS"}


def test_fake_kernel_on_meta_tensors():
    case = make_case(9, **CASES["groups_offset_groups_geometry"])
    meta = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in case.items()}
    out = deform_conv2d(**meta)
    assert out.device.type == "meta" and out.shape == case["offset"].shape[:1] + (6, 4, 6)


def _changed(**changes):
    case = make_case(10, channels=4, groups=2, offset_groups=2)
    for key, value in changes.items():
        case[key] = value(case) if callable(value) else value
    return case


@pytest.mark.parametrize("changes, error, words", [
    (dict(input=lambda c: c["input"][0]), ValueError, "input must be 4-D"),
    (dict(weight=lambda c: c["weight"][0]), ValueError, "weight must be 4-D"),
    (dict(offset=lambda c: c["offset"][0]), ValueError, "offset must be 4-D"),
    (dict(mask=lambda c: c["mask"][0]), ValueError, "mask must be 4-D"),
    (dict(weight=lambda c: torch.randn(6, 3, 3, 3)), ValueError, "weight: input channels"),
    (dict(weight=lambda c: torch.randn(5, 2, 3, 3), bias=None), ValueError,
     "weight: 5 output channels"),
    (dict(bias=lambda c: torch.randn(5)), ValueError, "bias must be (6,)"),
    (dict(offset=lambda c: c["offset"][:, :-1]), ValueError, "offset: 35 channels"),
    (dict(offset=lambda c: torch.randn(2, 54, 7, 6), mask=None), ValueError,
     "offset: input channels 4"),
    (dict(offset=lambda c: c["offset"][:, :, :-1]), ValueError, "offset spatial size"),
    (dict(offset=lambda c: c["offset"][:1]), ValueError, "offset batch"),
    (dict(mask=lambda c: c["mask"][:, :, :, 1:]), ValueError, "mask spatial size"),
    (dict(mask=lambda c: c["mask"][:, :9]), ValueError, "mask must have"),
    (dict(mask=lambda c: c["mask"][:1]), ValueError, "mask batch"),
    (dict(input=lambda c: c["input"].double()), TypeError, "offset must have input's dtype"),
    (dict(weight=lambda c: c["weight"].double()), TypeError, "weight must have input's dtype"),
    (dict(mask=lambda c: c["mask"].half()), TypeError, "mask must have input's dtype"),
    (dict(bias=lambda c: c["bias"].double()), TypeError, "bias must have input's dtype"),
    (dict(input=lambda c: c["input"].int()), TypeError, "input must be a floating tensor"),
    (dict(stride=0), ValueError, "stride must be >= 1"),
    (dict(padding=(1, -1)), ValueError, "padding must be >= 0"),
    (dict(dilation=(1, 1, 1)), TypeError, "dilation must be an int or a pair"),
    (dict(stride=1.5), TypeError, "stride must be an int or a pair"),
    (dict(input=lambda c: c["input"][:, :, :1, :1], padding=0), ValueError, "too small"),
])
def test_bad_input_raises_a_clear_error(changes, error, words):
    with pytest.raises(error, match="deform_conv2d") as info:
        deform_conv2d(**_changed(**changes))
    assert words in str(info.value)


# --- export and the four conversions -------------------------------------------------------------

class DeformBlock(torch.nn.Module):
    """An offset/mask-predicting conv followed by the deformable conv, as DCNv2 layers do;
    the offsets are scaled up so that many samples leave the image."""

    def __init__(self, channels, out_channels, *, groups=1, offset_groups=1, stride=1,
                 padding=1, dilation=1, modulated=True, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.modulated, self.geometry = modulated, (stride, padding, dilation)
        per_tap = 3 if modulated else 2
        self.predict = torch.nn.Conv2d(channels, per_tap * offset_groups * 9, 3, stride,
                                       padding, dilation)
        self.offset_channels = 2 * offset_groups * 9
        self.weight = torch.nn.Parameter(torch.randn(out_channels, channels // groups, 3, 3))
        self.bias = torch.nn.Parameter(torch.randn(out_channels))

    def forward(self, x):
        prediction = self.predict(x)
        offset = prediction[:, :self.offset_channels] * 4
        mask = torch.sigmoid(prediction[:, self.offset_channels:]) if self.modulated else None
        return deform_conv2d(x, offset, self.weight, self.bias, *self.geometry, mask=mask)

    def reference(self, x, reference=loop_reference):
        with torch.no_grad():
            prediction = self.predict(x)
            offset = (prediction[:, :self.offset_channels] * 4).numpy()
            mask = (torch.sigmoid(prediction[:, self.offset_channels:]).numpy()
                    if self.modulated else None)
        stride, padding, dilation = (pair(v) for v in self.geometry)
        return reference(x.numpy(), offset, self.weight.detach().numpy(),
                         self.bias.detach().numpy(), stride, padding, dilation, mask)


# mask=None and bias=None: the border case that Model runs beside the block.
BLOCKS = {
    "v2": dict(channels=4, out_channels=6, groups=2, offset_groups=2, stride=(2, 1),
               padding=(1, 2), dilation=(1, 2)),
}


def run_onnxruntime(path, inputs, threads=2, runs=2):
    """All outputs; `runs` runs with `threads` intra-op threads must agree bit for bit."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs, strict=True)}
    results = [session.run(None, feed) for _ in range(runs)]
    assert all(np.array_equal(a, b) for other in results[1:]
               for a, b in zip(results[0], other, strict=True))
    return results[0]


def run_openvino(model, inputs, runs=2):
    """All outputs, f32 pinned; repeated runs must agree bit for bit."""
    compiled = ov.Core().compile_model(model, "CPU", F32)
    results = [[v.copy() for v in compiled([t.numpy() for t in inputs]).values()]
               for _ in range(runs)]
    assert all(np.array_equal(a, b) for other in results[1:]
               for a, b in zip(results[0], other, strict=True))
    return results[0]


def onnx_op_types(path):
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def openvino_op_types(model):
    return {node.get_type_name() for node in model.get_ordered_ops()}


class Model(torch.nn.Module):
    """A DCNv2 block on a dynamic input, and the border case (no mask, no bias) beside it,
    so that one export and four conversions cover both."""

    def __init__(self, block):
        super().__init__()
        self.block = block
        self.border_weight = torch.nn.Parameter(border_case()["weight"])

    def forward(self, x, image, offset):
        border = deform_conv2d(image, offset, self.border_weight, None, 1, (3, 2), 1)
        return self.block(x), border


@pytest.fixture(scope="module", params=sorted(BLOCKS))
def conversions(request, tmp_path_factory):
    """Exported from a batch-1 example with dynamic batch, height and width (a batch of 1 is
    the case torch's matmul decomposition specialises); probed at another size."""
    block = DeformBlock(**BLOCKS[request.param]).eval()
    border = border_case()
    example = (torch.randn(1, block.predict.in_channels, 9, 8), border["input"],
               border["offset"])
    dims = {0: torch.export.Dim("B", min=1), 2: torch.export.Dim("H", min=6),
            3: torch.export.Dim("W", min=6)}
    program = dynexport.export(Model(block), example, dynamic_shapes=(dims, None, None))
    folder = tmp_path_factory.mktemp(f"onnx_{request.param}")
    plain = folder / "plain.onnx"
    torch.onnx.export(program, dynamo=True, verbose=False).save(plain)
    return dict(block=block, program=program,
                onnx=dynexport.to_onnx(program, folder / "model.onnx"), plain_onnx=plain,
                openvino=dynexport.to_openvino(program), plain_openvino=ov.convert_model(program))


def probe_for(block):
    g = torch.Generator().manual_seed(11)
    return torch.randn(3, block.predict.in_channels, 11, 13, generator=g)


def test_export_keeps_the_op(conversions):
    targets = [n.target for n in conversions["program"].graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.dynexport.deform_conv2d.default) == 2


def test_translations_are_the_native_ops(conversions):
    assert "DeformConv" in onnx_op_types(conversions["onnx"])
    assert "DeformConv" not in onnx_op_types(conversions["plain_onnx"])  # the decomposition
    assert "DeformableConvolution" in openvino_op_types(conversions["openvino"])
    assert "DeformableConvolution" not in openvino_op_types(conversions["plain_openvino"])


@pytest.mark.parametrize("kind", ["onnx", "plain_onnx", "openvino", "plain_openvino"])
def test_conversion_matches_the_reference(conversions, kind):
    """onnx DeformConv / OpenVINO DeformableConvolution (bilinear_interpolation_pad) and the
    decomposition, at another size than exported, and at the image borders without mask
    and bias."""
    block = conversions["block"]
    border = border_case()
    inputs = [probe_for(block), border["input"], border["offset"]]
    run = run_onnxruntime if kind.endswith("onnx") else run_openvino
    out, border_out = run(conversions[kind], inputs)
    np.testing.assert_allclose(out, block.reference(inputs[0]), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(border_out, reference_of(border), rtol=1e-5, atol=1e-5)


# --- FCOS3D size: ResNet-101 stage 3 DCNv2, 256 channels, 3x3, on a 58x100 map --------------------

class FCOS3DLayer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.weight = torch.nn.Parameter(torch.randn(256, 256, 3, 3) * 0.02)

    def forward(self, x, offset, mask):
        return deform_conv2d(x, offset, self.weight, None, 1, 1, 1, mask)


def test_fcos3d_sized_layer_everywhere(tmp_path):
    g = torch.Generator().manual_seed(12)
    x = torch.randn(1, 256, 58, 100, generator=g)
    offset = torch.randn(1, 18, 58, 100, generator=g) * 2
    mask = torch.rand(1, 9, 58, 100, generator=g)
    layer = FCOS3DLayer()
    expected = vector_reference(x.numpy(), offset.numpy(), layer.weight.detach().numpy(),
                                None, (1, 1), (1, 1), (1, 1), mask.numpy())
    inputs = (x, offset, mask)
    outputs = {"eager": layer(*inputs).detach().numpy()}
    program = dynexport.export(layer, inputs)
    [outputs["onnx"]] = run_onnxruntime(dynexport.to_onnx(program, tmp_path / "m.onnx"), inputs)
    [outputs["openvino"]] = run_openvino(dynexport.to_openvino(program), inputs)
    for name, out in outputs.items():
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4, err_msg=name)

"""OpenMMLab models: an mmdet3d config (and checkpoint) instead of a SCRIPT.py.

* `load_config(path, argv)` is a pipeline loader (`python -m dynexport --mmdet3d CONFIG
  [--checkpoint PATH] [--input-size HxW] [--cfg-options KEY=VALUE ...]`): it builds the
  detector, wraps it in a `DetectorModule` and makes example and probe images from the
  config's test pipeline and data preprocessor.
* `build_detector(config, checkpoint, cfg_options)` builds a detector the way mmdet3d's own
  tools do (mmengine Config, `register_all_modules`, `MODELS.build`, `load_checkpoint`), under
  mmcv-lite too (see `mmcv_standin`).
* `DetectorModule` turns a detector into a tensor-in / tensor-out module: images in, the
  head's raw outputs out; the post-processing (box decoding, NMS) stays outside the graph.

Importing this module needs none of the OpenMMLab packages; using the loader does, and
reports their absence as a ScriptError (exit status 2).
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import math
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from dynexport.errors import one_line
from dynexport.hazards.records import Hazard
from dynexport.inputs import Inputs
from dynexport.integrations import mmcv_standin
from dynexport.script import Script, ScriptError

__all__ = ["DetectorModule", "build_detector", "load_config"]

INSTALL_HINT = (
    "Install the OpenMMLab stack in its own environment with the recipe of README.md, section "
    "'OpenMMLab models (optional)': `pip install -c constraints-mmdet3d.txt -e \".[mmdet3d]\"` "
    "then `pip install -c constraints-mmdet3d.txt --no-deps mmdet3d nuscenes-devkit "
    "lyft-dataset-sdk`.")
_STACK = ("mmengine", "mmcv", "mmdet", "mmdet3d")
# Where each convention's heads turn raw outputs into boxes (decoding, NMS).
_POSTPROCESSING = {"1.x": "predict_by_feat", "0.x": "get_bboxes"}
_HEADS = ("bbox_head", "pts_bbox_head")


# --- the detector as a tensor-in / tensor-out module -----------------------------------------

class _PostProcessingReached(Exception):
    """Raised by the cut in place of the head's post-processing; args[0] holds the tensors
    handed to it. (No __init__ of its own: dynamo cannot trace `super().__init__` of an
    exception, and strict capture would fail.)"""


def _only_tensors(value: Any) -> bool:
    """A tensor, or a non-empty list/tuple/dict made only of such values."""
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, dict):
        value = list(value.values())
    return isinstance(value, (list, tuple)) and bool(value) and all(map(_only_tensors, value))


def convention(detector: torch.nn.Module) -> str:
    """"1.x" for `forward(inputs, data_samples, mode)`, "0.x" for `forward(return_loss, ...)`."""
    parameters = inspect.signature(detector.forward).parameters
    if "mode" in parameters:
        return "1.x"
    if "return_loss" in parameters:
        return "0.x"
    raise ValueError(f"{type(detector).__name__}.forward follows neither mmdet3d 1.x's "
                     "`forward(inputs, data_samples, mode)` nor 0.x's "
                     "`forward(return_loss, **kwargs)`; wrap it in a SCRIPT.py instead.")


class DetectorModule(torch.nn.Module):
    """An mmdet3d camera detector as a module from images to the head's raw outputs.

    `forward(imgs)` (imgs: (B, 3, H, W), normalized and padded as the data preprocessor
    leaves them) calls the detector the way testing does, with `metainfo` as every image's
    metadata, a constant: mmdet3d 1.x `forward({"imgs": imgs}, data_samples, mode="predict")`,
    0.x `forward(return_loss=False, img=[imgs], img_metas=[metas])`. The head's
    post-processing (1.x `predict_by_feat`, 0.x `get_bboxes`), which decodes boxes and runs
    NMS with mmcv's compiled ops, is replaced on this detector by a cut: the tensors handed to
    it are returned instead, as a dict named after its parameters (e.g. `cls_scores`,
    `bbox_preds`), and the post-processing stays outside the exported graph.
    """

    def __init__(self, detector: torch.nn.Module, metainfo: dict[str, Any] | None = None):
        super().__init__()
        self.detector = detector
        self.metainfo = dict(metainfo or {})
        self.convention = convention(detector)
        self.postprocessing = _POSTPROCESSING[self.convention]
        # By name: assigning the head itself would register it a second time as a submodule.
        self.head_name = next((name for name in _HEADS
                               if hasattr(getattr(detector, name, None), self.postprocessing)),
                              None)
        if self.head_name is None:
            raise ValueError(f"{type(detector).__name__} has no {' or '.join(_HEADS)} with "
                             f"`{self.postprocessing}`, where dynexport cuts the "
                             "post-processing off; wrap it in a SCRIPT.py instead.")
        self._sample_type = None
        if self.convention == "1.x":
            from mmdet3d.structures import Det3DDataSample

            self._sample_type = Det3DDataSample
        head = getattr(detector, self.head_name)
        names = list(inspect.signature(getattr(head, self.postprocessing)).parameters)
        # An instance attribute shadows the head's method, so the cut applies to this
        # detector only.
        setattr(head, self.postprocessing, _cut(names))

    def forward(self, imgs: torch.Tensor) -> dict[str, Any]:
        metas = [dict(self.metainfo) for _ in range(imgs.shape[0])]
        # `.forward`, not a module call: the cut's exception must not unwind through
        # nn.Module.__call__, whose exit hooks non-strict export relies on.
        try:
            if self.convention == "1.x":
                samples = [self._sample_type(metainfo=meta) for meta in metas]
                self.detector.forward(inputs={"imgs": imgs}, data_samples=samples,
                                      mode="predict")
            else:
                self.detector.forward(return_loss=False, img=[imgs], img_metas=[metas])
        except _PostProcessingReached as reached:
            return reached.args[0]
        raise RuntimeError(f"{type(self.detector).__name__} returned without calling "
                           f"{self.head_name}.{self.postprocessing}")

    def postprocessing_hazard(self) -> Hazard:
        """The report's note that the post-processing is not in the graph, at its `def`."""
        head_type = type(getattr(self.detector, self.head_name))
        function = getattr(head_type, self.postprocessing)
        lines, start = inspect.getsourcelines(function)
        offset = next(i for i, line in enumerate(lines) if line.lstrip().startswith("def "))
        where = f"{head_type.__name__}.{self.postprocessing}"
        return Hazard(
            category="non_tensor_output", severity="warning",
            file=inspect.getsourcefile(function), line=start + offset,
            code=lines[offset].strip(),
            message=(f"The detector's predictions are objects built by {where} (box "
                     "decoding, and NMS where the head uses it, an mmcv compiled op); the "
                     "exported model stops before it and returns the head's raw outputs. The "
                     "post-processing is not in the graph."),
            fix=(f"Run {where} on the converted model's outputs in PyTorch (with mmcv's "
                 "compiled ops where it uses NMS), or reimplement the decoding after "
                 "inference."))


def _cut(names: list[str]):
    def cut(*args, **kwargs):
        arguments = dict(zip(names, args, strict=False)) | kwargs
        raise _PostProcessingReached(
            {name: value for name, value in arguments.items() if _only_tensors(value)})

    return cut


# --- building a detector from a config -------------------------------------------------------

def _require_stack() -> None:
    missing = [name for name in _STACK if importlib.util.find_spec(name) is None]
    if missing:
        raise ScriptError(f"`--mmdet3d` needs the optional OpenMMLab packages, and "
                          f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
                          f"installed in this environment. {INSTALL_HINT}")


def _registered() -> None:
    """mmcv usable (stand-in where it has no compiled ops), every mmdet3d module registered."""
    try:
        mmcv_standin.install()
        from mmdet3d.utils import register_all_modules

        register_all_modules(init_default_scope=True)
    except Exception as exc:
        raise ScriptError(f"Importing the OpenMMLab stack failed ({one_line(exc)}). Check "
                          f"that its versions match constraints-mmdet3d.txt. {INSTALL_HINT}"
                          ) from exc


def _config(config: str | os.PathLike, cfg_options: dict[str, Any] | None):
    from mmengine.config import Config

    path = Path(config)
    if not path.is_file():
        raise ScriptError(f"The config {path} does not exist. Pass the path of an mmdet3d "
                          "config file, e.g. one of the configs shipped in the mmdet3d package "
                          "(mmdet3d/.mim/configs/).")
    try:
        cfg = Config.fromfile(str(path))
        if cfg_options:
            cfg.merge_from_dict(cfg_options)
    except Exception as exc:
        raise ScriptError(f"mmengine could not read the config {path}: {one_line(exc)}. Fix "
                          "the config (or the --cfg-options given with it).") from exc
    if "model" not in cfg:
        raise ScriptError(f"The config {path} has no `model`; pass a model config.")
    return cfg


def build_detector(config: str | os.PathLike, checkpoint: str | os.PathLike | None = None,
                   cfg_options: dict[str, Any] | None = None) -> torch.nn.Module:
    """The detector of an mmdet3d config, in eval mode: `cfg_options` merged into the config
    (mmengine's `--cfg-options`), weights from `checkpoint`, or seeded random ones without.
    Raises ScriptError when the stack is missing or the config, model or checkpoint is
    unusable."""
    _require_stack()
    _registered()
    return _build(_config(config, cfg_options), checkpoint)


def _build(cfg, checkpoint: str | os.PathLike | None) -> torch.nn.Module:
    from mmdet3d.registry import MODELS

    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the same random weights on every run without a checkpoint
            detector = MODELS.build(cfg.model)
    except Exception as exc:
        raise ScriptError(f"mmdet3d could not build the model of the config: {one_line(exc)}. "
                          "Fix the config's `model` (or the --cfg-options given with it).") \
            from exc
    if checkpoint is not None:
        _load_checkpoint(detector, Path(checkpoint))
    return detector.eval()


def _load_checkpoint(detector: torch.nn.Module, path: Path) -> None:
    from mmengine.runner import load_checkpoint

    if not path.is_file():
        raise ScriptError(f"The checkpoint {path} does not exist. Pass the path of a .pth file "
                          "saved for this config.")
    try:
        loaded = load_checkpoint(detector, str(path), map_location="cpu", logger="silent")
    except pickle.UnpicklingError as exc:
        raise ScriptError(
            f"torch refused to unpickle {path} with weights_only=True (its default since 2.6): "
            "the checkpoint holds Python objects besides tensors (e.g. mmengine's training "
            "state). If you trust the file, run again with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 "
            "(torch's own switch), or save only its 'state_dict' to a new file.") from exc
    except Exception as exc:
        raise ScriptError(f"Loading the checkpoint {path} failed: {one_line(exc)}.") from exc
    # mmengine loads non-strictly and only logs what is missing; weights left random would
    # make every later number meaningless.
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else {}
    present = {key.removeprefix("module.") for key in state}
    missing = [key for key in detector.state_dict() if key not in present]
    if missing:
        raise ScriptError(f"The checkpoint {path} has no values for {len(missing)} of the "
                          f"model's parameters and buffers (e.g. {', '.join(missing[:3])}). "
                          "Pass the checkpoint trained with this config.")


# --- example inputs from the config ----------------------------------------------------------

def _transforms(pipeline: Any) -> list[dict]:
    """Every transform of a test pipeline, nested ones (MultiScaleFlipAug3D) included."""
    found = []
    for transform in pipeline or []:
        if isinstance(transform, dict):
            found.append(transform)
            found += _transforms(transform.get("transforms"))
    return found


def _test_pipeline(cfg) -> list[dict]:
    dataset = cfg.get("test_dataloader", {}).get("dataset", {})
    while "pipeline" not in dataset and "dataset" in dataset:  # dataset wrappers
        dataset = dataset["dataset"]
    return _transforms(dataset.get("pipeline") or cfg.get("test_pipeline"))


def _check_camera_only(pipeline: list[dict], path: Path) -> None:
    types_ = {str(t.get("type", "")).split(".")[-1] for t in pipeline}
    keys = {key for t in pipeline if "keys" in t for key in t["keys"]}
    if "points" in keys or "LoadPointsFromFile" in types_:
        raise ScriptError(f"The config {path} describes a detector that takes point clouds; "
                          "`--mmdet3d` exports camera detectors fed one image per sample "
                          "(e.g. FCOS3D, SMOKE, PGD). Wrap this detector in a SCRIPT.py that "
                          "passes its voxelized inputs.")
    if "LoadMultiViewImageFromFiles" in types_:
        raise ScriptError(f"The config {path} describes a multi-view camera detector; "
                          "`--mmdet3d` exports detectors fed one image per sample. Wrap it in a "
                          "SCRIPT.py with `DetectorModule` and the views' metadata.")


def _pipeline_size(pipeline: list[dict]) -> tuple[int, int] | None:
    """(height, width) a resize of the test pipeline fixes (OpenMMLab writes (w, h))."""
    for transform in pipeline:
        for key in ("img_scale", "scale"):
            scale = transform.get(key)
            if scale and isinstance(scale[0], (list, tuple)):  # several scales: the first
                scale = scale[0]
            if isinstance(scale, (list, tuple)) and len(scale) == 2 \
                    and all(isinstance(s, int) for s in scale):
                return scale[1], scale[0]
    return None


def _parse_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        height = width = 0
    if height <= 0 or width <= 0:
        raise ScriptError(f"--input-size {text!r} is not a size; write HEIGHTxWIDTH in pixels, "
                          "e.g. `--input-size 384x1280`.")
    return height, width


def _images(preprocessor: dict, height: int, width: int, seed: int) -> torch.Tensor:
    """A batch of one random 8-bit image, normalized as the data preprocessor does."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (1, 3, height, width), generator=generator).float()
    mean = torch.tensor(preprocessor.get("mean") or [0.0] * 3).view(1, 3, 1, 1)
    std = torch.tensor(preprocessor.get("std") or [1.0] * 3).view(1, 3, 1, 1)
    return (pixels - mean) / std


def _metainfo(cfg, height: int, width: int, padded: tuple[int, int]) -> dict[str, Any]:
    meta: dict[str, Any] = {"ori_shape": (height, width), "img_shape": (height, width),
                            "pad_shape": padded, "scale_factor": (1.0, 1.0), "flip": False}
    box_type = cfg.get("test_dataloader", {}).get("dataset", {}).get("box_type_3d")
    if box_type:
        from mmdet3d.structures import get_box_type

        meta["box_type_3d"], meta["box_mode_3d"] = get_box_type(box_type)
    return meta


# --- the loader ------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise ScriptError(f"{message}. The arguments after `--mmdet3d CONFIG` are "
                          "[--checkpoint PATH] [--input-size HxW] [--cfg-options KEY=VALUE ...].")


def _arguments(argv: list[str]) -> argparse.Namespace:
    from mmengine.config import DictAction

    parser = _Parser(prog="python -m dynexport --mmdet3d CONFIG", add_help=False)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--input-size")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={})
    return parser.parse_args(argv)


def load_config(path: str | os.PathLike, argv: list[str] | None = None) -> Script:
    """A pipeline loader: the Script for an mmdet3d config and its arguments `argv`
    (`--checkpoint PATH`, `--input-size HxW`, `--cfg-options KEY=VALUE ...`)."""
    _require_stack()
    args = _arguments(argv or [])
    _registered()
    path = Path(path)
    cfg = _config(path, args.cfg_options)
    pipeline = _test_pipeline(cfg)
    _check_camera_only(pipeline, path)
    size = _parse_size(args.input_size) if args.input_size else _pipeline_size(pipeline)
    if size is None:
        raise ScriptError(f"The test pipeline of {path} does not fix the image size (it keeps "
                          "each image's own). Pass the size to export for with "
                          "`--input-size HEIGHTxWIDTH`, e.g. `--input-size 928x1600`.")
    detector = _build(cfg, args.checkpoint)
    preprocessor = dict(cfg.model.get("data_preprocessor") or {})
    divisor = preprocessor.get("pad_size_divisor") or 1
    padded = tuple(math.ceil(s / divisor) * divisor for s in size)  # as the preprocessor pads
    try:
        model = DetectorModule(detector, _metainfo(cfg, *size, padded))
    except ValueError as exc:
        raise ScriptError(f"The model of {path} cannot be wrapped: {exc}") from exc
    example, probe = (Inputs(args=(_images(preprocessor, *padded, seed),)) for seed in (0, 1))
    return Script(path=path, model=model, example=example, probe=probe,
                  hazards=[model.postprocessing_hazard()])

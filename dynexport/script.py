"""Load stage: read a user's SCRIPT.py (contract §2) into a Script record.

Every way a script can be unusable becomes a ScriptError whose message is one paragraph:
what is wrong and how to fix it. The CLI maps it to exit status 2."""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch.utils import _pytree as pytree

from dynexport.errors import where_raised
from dynexport.hazards.records import Hazard
from dynexport.inputs import Inputs, InputStructureError, make_probe, normalize_inputs
from dynexport.tolerance import Tolerance, parse_tolerances

_SCRIPT_HELP = ("A dynexport script defines `get_model()` returning a torch.nn.Module and "
                "`get_inputs()` returning example inputs (see the contract, section 2).")


class ScriptError(Exception):
    """The script cannot be used; the message says what is wrong and how to fix it."""


@dataclass
class Script:
    """What a script declares: the model, its inputs and how to export it."""

    path: Path
    model: torch.nn.Module
    example: Inputs
    probe: Inputs
    dynamic_shapes: Any = None
    method: str = "forward"
    # get_calibration_inputs (optional), called only by --precision int8.
    calibration: Callable[[], list[Inputs]] | None = None
    # get_validation_data (optional): (inputs, target) pairs, for the accuracy stage
    validation: Callable[[], list[tuple[Inputs, Any]]] | None = None
    # metric(outputs, targets) -> {name: value}, higher is better, first key primary; None
    # with validation data: no accuracy table (integer outputs still get label agreement)
    metric: Callable[[list[Any], list[Any]], dict[str, float]] | None = None
    # picture(output, target) -> (H, W, 3) uint8 RGB array (optional): the accuracy stage
    # draws the first validation sample of each row with it
    picture: Callable[[Any, Any], np.ndarray] | None = None
    # Known when loading, before any stage runs: e.g. an integration's note that it left a
    # model's post-processing out of the exported graph.
    hazards: list[Hazard] = field(default_factory=list)
    # tolerances (optional): how verification judges named outputs
    tolerances: dict[str, Tolerance] = field(default_factory=dict)

    def labelled_outputs(self) -> set[str]:
        """The float outputs judged by their argmax labels (`tolerances`' argmax)."""
        return {name for name, tolerance in self.tolerances.items() if tolerance.argmax}


def load_script(path: str | os.PathLike, argv: list[str] | None = None) -> Script:
    """Import `path` with `argv` as its sys.argv[1:], call its functions, check what they give."""
    path = Path(path)
    if not path.is_file():
        hint = "is a directory" if path.is_dir() else "does not exist"
        raise ScriptError(f"The script {path} {hint}. Pass the path of a Python file, e.g. "
                          f"`python -m dynexport examples/convnet.py`. {_SCRIPT_HELP}")
    if path.suffix != ".py":
        raise ScriptError(f"The script {path} is not a Python file (.py). {_SCRIPT_HELP}")
    saved_argv, sys.argv = sys.argv, [str(path), *(argv or [])]
    try:
        return _load(path)
    finally:
        sys.argv = saved_argv


def _load(path: Path) -> Script:
    module = _import(path)
    model = _call(module, "get_model", path)
    if not isinstance(model, torch.nn.Module):
        raise ScriptError(f"get_model() in {path} returned {type(model).__name__}, not a "
                          "torch.nn.Module. Return the model instance itself, e.g. "
                          "`return MyNet().eval()`.")
    method = getattr(module, "method", "forward")
    if not isinstance(method, str) or not callable(getattr(model, method, None)):
        raise ScriptError(f"`method = {method!r}` in {path} does not name a method of "
                          f"{type(model).__name__}. Set it to the name of the method to export, "
                          "or remove it to export `forward`.")
    example = _inputs(module, "get_inputs", path)
    has_probe = callable(getattr(module, "get_probe_inputs", None))
    probe = _inputs(module, "get_probe_inputs", path) if has_probe else make_probe(example)
    if has_probe:
        _check_same_structure(example, probe, path)
    calibration = None
    if getattr(module, "get_calibration_inputs", None) is not None:
        calibration = lambda: _calibration_inputs(module, path, example)  # noqa: E731
    validation = None
    if getattr(module, "get_validation_data", None) is not None:
        # Made once: the precision stage (NNCF's accuracy control, each --precision auto
        # candidate) and the accuracy stage all read it, and making scenes is not cheap.
        validation = functools.cache(lambda: _validation_data(module, path, example))
    metric = None
    if getattr(module, "metric", None) is not None:
        metric = _checked_metric(module.metric, path)
    picture = None
    if getattr(module, "picture", None) is not None:
        picture = _checked_picture(module.picture, path)
    try:
        tolerances = parse_tolerances(getattr(module, "tolerances", {}), str(path))
    except ValueError as exc:
        raise ScriptError(f"{exc}. Example: `tolerances = {{\"logits\": {{\"share\": "
                          "0.999}}}` lets 0.1 % of the logits differ beyond the default "
                          "tolerance (contract section 2).") from exc
    return Script(path=path, model=model, example=example, probe=probe,
                  dynamic_shapes=getattr(module, "dynamic_shapes", None), method=method,
                  calibration=calibration, validation=validation, metric=metric,
                  picture=picture, tolerances=tolerances)


def _import(path: Path) -> ModuleType:
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    # A private module name: the script's stem may equal a package beside it (flashocc.py next
    # to flashocc/), which the script itself imports.
    name = f"_dynexport_script_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise ScriptError(f"The script {path} has a syntax error at line {exc.lineno}: "
                          f"{exc.msg}. Fix that line; the script must be importable with "
                          f"`python {path}`.") from exc
    except SystemExit as exc:
        raise ScriptError(f"The script {path} called sys.exit({exc.code}) while being imported "
                          "(an argument parser rejecting its arguments?). Arguments after the "
                          "script's path are passed to it as sys.argv[1:]; check them, and put "
                          "top-level work under `if __name__ == '__main__':`.") from exc
    except Exception as exc:
        raise ScriptError(f"Importing the script {path} raised {_summary(exc)}. The script must "
                          "import cleanly; fix the error (run `python -m dynexport --debug ...` "
                          "for the traceback).") from exc
    return module


def _call(module: ModuleType, name: str, path: Path) -> Any:
    function = getattr(module, name, None)
    if function is None:
        raise ScriptError(f"The script {path} has no `{name}()` function. {_SCRIPT_HELP}")
    if not callable(function):
        raise ScriptError(f"`{name}` in {path} is a {type(function).__name__}, not a function. "
                          f"Define it as `def {name}(): ...`. {_SCRIPT_HELP}")
    try:
        return function()
    except Exception as exc:
        raise ScriptError(f"`{name}()` in {path} raised {_summary(exc)}. Fix it so that it runs "
                          "on its own (run `python -m dynexport --debug ...` for the "
                          "traceback).") from exc


def _inputs(module: ModuleType, name: str, path: Path) -> Inputs:
    try:
        return normalize_inputs(_call(module, name, path), source=f"{name}() in {path}")
    except InputStructureError as exc:
        raise ScriptError(str(exc)) from exc


def _check_same_structure(example: Inputs, probe: Inputs, path: Path,
                          name: str = "get_probe_inputs()") -> None:
    spec_example = pytree.tree_structure((example.args, example.kwargs))
    spec_probe = pytree.tree_structure((probe.args, probe.kwargs))
    if spec_example != spec_probe:
        raise ScriptError(f"{name} in {path} returns a different structure from "
                          "get_inputs(). It must have the same arguments, with other "
                          "values (and, where shapes are dynamic, other sizes).")


def _calibration_inputs(module: ModuleType, path: Path, example: Inputs) -> list[Inputs]:
    """get_calibration_inputs(): an iterable of inputs, each structured as get_inputs()'s."""
    values = _call(module, "get_calibration_inputs", path)
    try:
        samples = list(values)
    except TypeError:
        samples = None
    if not samples:
        raise ScriptError(f"get_calibration_inputs() in {path} returned "
                          f"{type(values).__name__}, not a non-empty list of inputs. Return "
                          "e.g. `[get_inputs() for _ in range(10)]` with other values each.")
    name = "an item of get_calibration_inputs()"
    try:
        inputs = [normalize_inputs(sample, source=f"{name} in {path}") for sample in samples]
    except InputStructureError as exc:
        raise ScriptError(str(exc)) from exc
    for item in inputs:
        _check_same_structure(example, item, path, name)
    return inputs


def _validation_data(module: ModuleType, path: Path,
                     example: Inputs) -> list[tuple[Inputs, Any]]:
    """get_validation_data(): (inputs, target) pairs, inputs structured as get_inputs()'s."""
    values = _call(module, "get_validation_data", path)
    try:
        pairs = [tuple(pair) for pair in values]
    except TypeError:
        pairs = None
    if not pairs or any(len(pair) != 2 for pair in pairs):
        raise ScriptError(f"get_validation_data() in {path} returned {type(values).__name__}, "
                          "not a non-empty iterable of (inputs, target) pairs. Return e.g. "
                          "`[(get_inputs(), labels) for ...]`, inputs shaped as get_inputs()'s.")
    name = "the inputs of a get_validation_data() pair"
    try:
        data = [(normalize_inputs(inputs, source=f"{name} in {path}"), target)
                for inputs, target in pairs]
    except InputStructureError as exc:
        raise ScriptError(str(exc)) from exc
    for inputs, _ in data:
        _check_same_structure(example, inputs, path, name)
    return data


def _checked_metric(function: Any, path: Path) -> Callable[[list[Any], list[Any]], dict]:
    """The script's metric, its failures and wrong answers turned into a ScriptError."""
    if not callable(function):
        raise ScriptError(f"`metric` in {path} is a {type(function).__name__}, not a function. "
                          "Define `def metric(outputs, targets) -> dict[str, float]`.")

    def metric(outputs: list[Any], targets: list[Any]) -> dict[str, float]:
        try:
            values = function(outputs, targets)
        except Exception as exc:
            raise ScriptError(f"`metric(outputs, targets)` in {path} raised {_summary(exc)}. It "
                              "gets the list of model outputs (as the model returns them, also "
                              "for the converted runtimes) and the list of targets of "
                              "get_validation_data(); fix it so it runs on those.") from exc
        if not isinstance(values, dict) or not values or not all(
                isinstance(k, str) and isinstance(v, (int, float)) for k, v in values.items()):
            raise ScriptError(f"`metric(outputs, targets)` in {path} returned {values!r:.80}, "
                              "not a non-empty dict of names to numbers (higher is better, the "
                              "first key is the primary metric), e.g. `{'mIoU': 41.2}`.")
        return {k: float(v) for k, v in values.items()}

    return metric


def _checked_picture(function: Any, path: Path) -> Callable[[Any, Any], np.ndarray]:
    """The script's picture hook, its failures and wrong answers turned into a ScriptError."""
    if not callable(function):
        raise ScriptError(f"`picture` in {path} is a {type(function).__name__}, not a function. "
                          "Define `def picture(output, target) -> numpy.ndarray` returning an "
                          "(H, W, 3) uint8 RGB image.")

    def picture(output: Any, target: Any) -> np.ndarray:
        try:
            image = function(output, target)
        except Exception as exc:
            raise ScriptError(f"`picture(output, target)` in {path} raised {_summary(exc)}. It "
                              "gets one model output (as the model returns it, also for the "
                              "converted runtimes) and the target of the first "
                              "get_validation_data() pair; fix it so it runs on those and "
                              "returns an (H, W, 3) uint8 RGB numpy array.") from exc
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
                and image.shape[2] == 3 and image.size):
            got = (f"an array of shape {image.shape} and dtype {image.dtype}"
                   if isinstance(image, np.ndarray) else f"a {type(image).__name__}")
            raise ScriptError(f"`picture(output, target)` in {path} returned {got}, not an "
                              "(H, W, 3) uint8 RGB numpy array. Return e.g. "
                              "`np.asarray(pil_image.convert('RGB'))`, or "
                              "`array.astype(np.uint8)` for colours in 0..255.")
        return image

    return picture


def _summary(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}{where_raised(exc)}"


ScriptLoader = Callable[[str | os.PathLike, list[str]], Script]

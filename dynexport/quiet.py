"""Silence torch's and the exporters' own chatter while a stage runs: dynexport reports what
matters itself, and the console shows the stages."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

_NOISY_LOGGERS = ("torch", "torch.fx", "torch._dynamo", "torch.export", "torch._export",
                  "torch.onnx", "torch.fx.experimental.symbolic_shapes", "torch._functorch",
                  "torch._subclasses", "torch._guards")


@contextmanager
def quiet_torch() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        # A failed export prints its partial graph to stderr; the report says what matters.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=False):
            logger.setLevel(level)

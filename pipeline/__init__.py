"""CFG Explorer's library: a streaming SDXL denoising loop with guidance modes, held to parity with diffusers.

Never imports gradio: usable from a notebook as it is. The names below are imported on first use (PEP 562), so
`import pipeline` and `from pipeline import DEFAULT_MODEL` cost no torch import: `python app.py --help` answers
at once, and torch, diffusers and transformers load when a model or a tensor function is first asked for.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import re
import sys
import types
from typing import TYPE_CHECKING, Any


class _TorchvisionFallbackFilter(logging.Filter):
    """Drops transformers' "`CLIPImageProcessor` requires torchvision (not installed); falling back to
    `CLIPImageProcessorPil`" (and the same for SiglipImageProcessor). diffusers' SDXL pipeline module imports
    both classes at import time, for the IP-Adapter and safety-checker image encoders, which we never use; the
    PIL classes they fall back to are what we would use anyway, so the two lines said nothing on every start."""

    _FALLBACK = re.compile(r"`\w+ImageProcessor` requires torchvision \(not installed\); falling back to")

    def filter(self, record: logging.LogRecord) -> bool:
        return not self._FALLBACK.search(record.getMessage())


# transformers' own logger for import-time messages; filtering the record keeps every other warning of it
logging.getLogger("transformers.utils.import_utils").addFilter(_TorchvisionFallbackFilter())

_EXPORTS: dict[str, str] = {  # public name -> the submodule that defines it
    "DEFAULT_MODEL": ".defaults",
    "GUIDANCE_MODES": ".guidance",
    "Mode": ".guidance",
    "cfg": ".guidance",
    "perp_neg": ".guidance",
    "reversed_cfg": ".guidance",
    "StepEvent": ".loop",
    "denoise": ".loop",
    "generate": ".loop",
    "ModelLoadError": ".models",
    "load_pipeline": ".models",
    "tiny_pipeline": ".models",
    "tiny_taesd": ".models",
    "toy_pipeline": ".models",
    "MODES": ".request",
    "SCHEDULERS": ".request",
    "UNCONDS": ".request",
    "GenerationRequest": ".request",
    "RequestError": ".request",
    "RunCache": ".whatif",
    "fork": ".whatif",
    "whatif": ".whatif",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """`pipeline.X`: a public name from its submodule, or a submodule (`pipeline.presets`), imported now."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    elif not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(types.ModuleType):
    """Keeps a public name that shares its submodule's name (`whatif`) the function: importing the submodule
    would otherwise set `pipeline.whatif` to the module (the import system's setattr on the parent), and
    `from pipeline import whatif` would then give the module."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and name in _EXPORTS and _EXPORTS[name] == f".{name}":
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:
    from .defaults import DEFAULT_MODEL
    from .guidance import GUIDANCE_MODES, Mode, cfg, perp_neg, reversed_cfg
    from .loop import StepEvent, denoise, generate
    from .models import ModelLoadError, load_pipeline, tiny_pipeline, tiny_taesd, toy_pipeline
    from .request import MODES, SCHEDULERS, UNCONDS, GenerationRequest, RequestError
    from .whatif import RunCache, fork, whatif

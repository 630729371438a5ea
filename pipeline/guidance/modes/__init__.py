"""The guidance modes, one file each. The table (`pipeline.guidance.GUIDANCE_MODES`) is assembled from them.

To add a mode, add a file here (its name is the mode's name) that holds:
- its formula as a pure function of noise predictions, with a docstring citing the paper and the diffusers
  guider it matches;
- `needs(scale, params) -> tuple[Part, ...]`: the predictions it asks for at that scale, in UNet batch order;
- `combine(preds, scale, params, state) -> Tensor`: its guided prediction from those predictions (with
  `takes_step=True` in its MODE, also `step`, the 0-based step index: `modes/apg_mix.py`);
- a pass under a model variant (PAG's perturbed attention): a `Part(..., variant="name:arg")` in `needs`, and
  the variant registered in `pipeline.denoiser.VARIANTS` by the file (`modes/pag.py`; shared parts in
  `modes/_perturbed.py`); `needs_step=True` in its MODE where its passes change with the step (`modes/seg.py`);
- `ORDER = <int>`: its place among the modes (the page's choices, the API's list), unique;
- `MODE = Mode(name, label, formula, needs, combine, params=(Param(...), ...), ...)`: its table entry
  (pipeline/guidance/base.py says what each field means: per-run state, zero-init steps, checks, a step rule).

`params` is a `Params` holding only the mode's own `Param`s (and the request fields named in `uses`): each
`Param` (one number, or with `length=n` a tuple of n, as `modes/fdg.py`) becomes a `GenerationRequest` field,
is range-checked, appears in the API, PNG metadata and links, and gets a control on the page, with no other
file to edit. Then write its test. Nothing else changes.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from ..base import Mode


def _load(name: str) -> ModuleType:
    module = importlib.import_module(f"{__name__}.{name}")
    if not isinstance(getattr(module, "MODE", None), Mode) or not isinstance(getattr(module, "ORDER", None), int):
        raise ImportError(f"{module.__name__}: a mode's file must define MODE (a Mode) and ORDER (an int)")
    if module.MODE.name != name:
        raise ImportError(f"{module.__name__}: MODE.name is {module.MODE.name!r}; a mode's file is named after it")
    return module


def discover() -> tuple[Mode, ...]:
    """Every mode in this folder, by ORDER (a file starting with "_" is not a mode)."""
    modules = [_load(info.name) for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_")]
    orders = [module.ORDER for module in modules]
    clash = sorted({order for order in orders if orders.count(order) > 1})
    if clash:
        raise ImportError(f"pipeline.guidance.modes: two modes share ORDER {clash[0]}; each needs its own place")
    return tuple(module.MODE for module in sorted(modules, key=lambda module: module.ORDER))

"""The Explore tab, in rooms: the controls, one run streamed live (previews, guidance plot, decomposition), and
the ways in and out of its settings (presets, links, PNGs).

- `defaults`: starting values and the collapsed groups (data).
- `layout`: the components (`build_explore_tab`), returned as a typed `view.ExploreView`.
- `wiring`: the events (`wire_explore`), over that view.
- the rooms of `Explore` (`tab`): `run` (validate, stream, Stop, refusals marked), `updates` (what a run shows as
  it streams), `revisit` (the step slider, the final images), `describe` (notes that follow the controls) and
  `settings` (presets, links, PNGs).

The run goes UI values -> GenerationRequest (`controls.request_from_settings`) -> a worker-thread `Run` ->
rendered updates. Handlers take and return plain values in the order of `CONTROL_NAMES`, so the page, the
API and the tests share one description of the controls.
"""

from ..run_stream import RUN_OUTPUTS as GENERATE_OUTPUTS
from .defaults import CONTROL_GROUPS, GROUP_TITLES, PAGE_DEFAULTS, PNG_LABEL, REQUEST_DEFAULTS, page_defaults
from .layout import build_explore_tab
from .tab import Explore
from .view import ExploreView
from .wiring import wire_explore

__all__ = ["CONTROL_GROUPS", "GENERATE_OUTPUTS", "GROUP_TITLES", "PAGE_DEFAULTS", "PNG_LABEL", "REQUEST_DEFAULTS",
           "Explore", "ExploreView", "build_explore_tab", "page_defaults", "wire_explore"]

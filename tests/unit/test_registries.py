"""One registry per concept: schedulers, preview decoders and schedules each have one table whose entries carry
their label (for the page) and what they use, and everything else reads it."""

from __future__ import annotations

import pytest

from pipeline.metadata import SAMPLER_NAMES
from pipeline.previews import DECODER_TABLE, PREVIEW_DECODERS
from pipeline.request import SCHEDULERS, GenerationRequest, RequestError
from pipeline.schedulers import SCHEDULER_CLASSES, SCHEDULER_TABLE
from pipeline.schedules import SCHEDULE_TABLE, SCHEDULES, guidance_scales


def test_the_request_metadata_and_classes_read_the_scheduler_table():
    assert SCHEDULERS == tuple(SCHEDULER_TABLE)
    assert SAMPLER_NAMES == {name: entry.a1111 for name, entry in SCHEDULER_TABLE.items()}
    assert SCHEDULER_CLASSES == {name: entry.cls for name, entry in SCHEDULER_TABLE.items()}
    assert all(entry.label for entry in SCHEDULER_TABLE.values())
    assert SCHEDULER_TABLE["ddim"].controls == ("eta",)
    assert [name for name, entry in SCHEDULER_TABLE.items() if not entry.resumable] == ["dpmpp_2m"]


def test_decoders_and_schedules_are_tables():
    assert PREVIEW_DECODERS == tuple(DECODER_TABLE) == ("vae", "tiny", "linear")
    assert SCHEDULES == tuple(SCHEDULE_TABLE) == ("constant", "linear", "cosine", "cutoff")
    assert all(entry.label for entry in [*DECODER_TABLE.values(), *SCHEDULE_TABLE.values()])
    assert SCHEDULE_TABLE["cutoff"].uses == ("guidance_cutoff",)
    # the formulas as before: cosine from s down to 1 along a half cosine; cutoff off from progress 0.4
    assert guidance_scales(7.5, 5, "cosine") == pytest.approx([7.5, 6.548097, 4.25, 1.951903, 1.0])
    assert guidance_scales(7.5, 6, "cutoff") == [7.5, 7.5, 1.0, 1.0, 1.0, 1.0]  # p = 0.4 at i = 2


def test_an_unknown_scheduler_is_refused_with_the_tables_names():
    with pytest.raises(RequestError, match="must be one of euler, euler_a, ddim, dpmpp_2m"):
        GenerationRequest(prompt="a", scheduler="heun")

"""The toy world is a drop-in SDXL: our loop on `toy_pipeline` lands on `StableDiffusionXLPipeline.__call__`.

The same oracle as test_parity.py (DESIGN.md, "Parity with diffusers"), with prompts in the toy's words, so the
conditional and unconditional predictions differ and guidance has something to do.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.parity.test_parity import Row, _cfg, _negative, _reversed, make_request, ours, theirs

# The bound for the toy. Measured max |ours - diffusers| on the final latents (64x96 px, 5 steps): cfg and
# negative 0.0 with every scheduler; reversed up to 2.4e-6 with |latents| up to 6.6 (the two formulas round
# differently, see test_parity.py).
TOY_TOL = dict(rtol=0.0, atol=1e-5)

ROWS = [
    Row("cfg", dict(prompt="red circle", prompt_2="big", mode="cfg", uncond="zeros"), _cfg, TOY_TOL),
    Row("reversed", dict(prompt="red", mode="reversed", uncond="zeros"), _reversed, TOY_TOL),
    Row("negative", dict(prompt="circle", mode="negative_direction", negative_prompt="blue"), _negative, TOY_TOL),
]
SCHEDULERS = [
    pytest.param("euler", 0.0, id="euler"),
    pytest.param("euler_a", 0.0, id="euler_a"),
    pytest.param("ddim", 0.5, id="ddim-eta0.5"),
    pytest.param("dpmpp_2m", 0.0, id="dpmpp_2m"),
]


@pytest.mark.parametrize(("scheduler", "eta"), SCHEDULERS)
@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.id)
def test_toy_latents_match_diffusers(toy_pipe, row: Row, scheduler: str, eta: float) -> None:
    request = make_request(row, scheduler, eta)
    latents, _ = ours(toy_pipe, request)
    expected = theirs(toy_pipe, row, request, output_type="latent")
    torch.testing.assert_close(latents, expected, **row.tol)
    assert float((latents - latents[:1]).abs().max()) > 0.1  # the seeds differ: not a degenerate run


@pytest.mark.parametrize("adherence", [0.3, 0.8])
@pytest.mark.parametrize("row", ROWS[:1] + ROWS[2:], ids=lambda row: row.id)
def test_a_runs_prompt_adherence_matches_diffusers_cross_attention_kwargs(toy_pipe, row: Row, adherence: float) -> None:
    """A run's `prompt_adherence` reaches the toy UNet as diffusers' own pipeline passes `cross_attention_kwargs`,
    so the oracle holds at any adherence (the session's toy model defaults to 0.5, which the rows above use)."""
    # At s = 1.5: at 7.5 guidance lands every seed on the same items whatever the adherence.
    request = dataclasses.replace(make_request(row, "euler", 0.0), prompt_adherence=adherence, guidance_scale=1.5)
    latents, _ = ours(toy_pipe, request)
    expected = theirs(toy_pipe, row, request, output_type="latent",
                      cross_attention_kwargs={"prompt_adherence": adherence})
    torch.testing.assert_close(latents, expected, **row.tol)
    default, _ = ours(toy_pipe, dataclasses.replace(request, prompt_adherence=None))
    assert float((latents - default).abs().max()) > 0.1  # the setting changed the run

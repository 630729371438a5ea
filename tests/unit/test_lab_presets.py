"""Each distribution-lab preset (presets/lab/*.toml) runs its own seeds, and what its description tells the
learner must hold, within a stated statistical tolerance.

The runs are deterministic (fixed seeds, the toy's float64 exact denoiser), so the numbers quoted in the
descriptions are what these runs give on this platform. The tolerances allow for another platform's rounding
moving a few seeds: with 256 seeds one seed moves a share by 0.004, and the binomial standard error of a share
near 0.5 is 0.031; each claim is checked with room of about two standard errors (0.06) around the quoted value,
and each comparison the description makes (A above B) by a margin of at least 0.1 unless stated.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.distribution import load_lab_preset, load_lab_presets, marginal, prompt_items, run_lab
from pipeline.presets import PresetError

TOL = 0.06  # about two binomial standard errors of a share near 0.5 at 256 seeds


def _run(toy_pipe, name: str) -> dict:
    (preset,) = [p for p in load_lab_presets() if p.name == name]
    out = {}
    for result in run_lab(toy_pipe, preset.settings):
        share = result.exact.counts / result.n_seeds
        out[(result.axis_value, result.scale)] = dict(result.exact.metrics, big=marginal(share, "size")["big"],
                                                      result=result)
    return out


def test_why_guidance(toy_pipe) -> None:
    r = _run(toy_pipe, "Why guidance")
    model_precision = 0.5 + 0.5 * 8 / 96  # the toy model's own share of blue squares
    assert abs(r[None, 1.0]["precision"] - model_precision) <= TOL and abs(r[None, 1.0]["precision"] - 0.50) <= TOL
    assert abs(r[None, 3.0]["precision"] - 0.90) <= TOL
    assert r[None, 7.5]["precision"] >= 0.97  # "all 100%": at most a few seeds off
    effective = [r[None, s]["effective_items"] for s in (1.0, 3.0, 7.5)]
    assert effective[0] > 2 * effective[1] > 2 * effective[2] * 0.9, effective  # 43 -> 12 -> 5.5


def test_guidance_is_not_sharpening(toy_pipe) -> None:
    r = _run(toy_pipe, "Guidance is not sharpening")
    for scale, big in ((1.0, 0.43), (3.0, 0.62), (5.0, 0.77), (7.5, 0.89)):
        assert abs(r[None, scale]["big"] - big) <= TOL, (scale, r[None, scale]["big"])
        tilted = r[None, scale]["result"].exact.targets["tilted"]
        assert marginal(tilted, "size")["big"] == pytest.approx(0.5, abs=1e-12)
    assert r[None, 5.0]["big"] - r[None, 1.0]["big"] >= 0.2  # CFG moves a property the prompt never names
    allowed = prompt_items(_request("Guidance is not sharpening"))
    assert r[None, 5.0]["result"].exact.targets["tilted"][allowed].sum() == pytest.approx(1.0, abs=0.005)
    assert abs(r[None, 5.0]["precision"] - 0.98) <= TOL


def _request(name: str):
    return next(p for p in load_lab_presets() if p.name == name).settings.request


def test_extremes_of_the_support(toy_pipe) -> None:
    r = _run(toy_pipe, "Extremes of the support")
    assert abs((1 - r[None, 1.0]["big"]) - 0.57) <= TOL
    assert 1 - r[None, 15.0]["big"] <= 0.05  # "only 4 of 256": small shapes nearly vanish
    assert r[None, 15.0]["precision"] == 1.0
    # The big blue squares are the items farthest from every other prompt's items.
    request = _request("Extremes of the support")
    items, allowed = toy_pipe.unet.items(16, 16), prompt_items(request)
    gap = torch.cdist(items[allowed], items[~allowed]).min(dim=1).values.numpy()
    from pipeline.models.toy import ITEMS

    sizes = np.array([ITEMS[n].size for n in np.flatnonzero(allowed)])
    assert gap[sizes == "big"] == pytest.approx(1.63, abs=0.01)
    assert gap[sizes == "small"] == pytest.approx(0.65, abs=0.01)


def test_guidance_interval(toy_pipe) -> None:
    r = _run(toy_pipe, "Guidance interval")
    full, first, last, none = r[(0.0, 1.0), 5.0], r[(0.0, 0.4), 5.0], r[(0.4, 1.0), 5.0], r[(0.0, 1.0), 1.0]
    for key, value in (("precision", 0.95), ("big", 0.74)):
        assert abs(first[key] - value) <= TOL
    assert abs(first["precision"] - full["precision"]) <= TOL and abs(first["big"] - full["big"]) <= TOL
    assert abs(last["precision"] - 0.78) <= TOL and last["precision"] - none["precision"] >= 0.2
    assert abs(last["big"] - none["big"]) <= 2 * TOL and full["big"] - last["big"] >= 0.2


def test_stochastic_samplers_sharpen_more(toy_pipe) -> None:
    r = _run(toy_pipe, "Stochastic samplers sharpen more")
    euler, ancestral = r["euler", 3.0], r["euler_a", 3.0]
    assert abs(ancestral["precision"] - 0.98) <= TOL and abs(euler["precision"] - 0.90) <= TOL
    assert ancestral["effective_items"] < euler["effective_items"] - 2  # 8.2 against 11.6
    assert r["euler_a", 2.0]["precision"] - r["euler", 2.0]["precision"] >= 0.06  # 0.88 against 0.77
    for scale in (2.0, 3.0):
        for deterministic, stochastic in (("euler", ("ddim", 0.0)), ("euler_a", ("ddim", 1.0))):
            np.testing.assert_array_equal(r[deterministic, scale]["result"].exact.counts,
                                          r[stochastic, scale]["result"].exact.counts)


def test_every_preset_has_a_test() -> None:
    tested = {"Why guidance", "Guidance is not sharpening", "Extremes of the support", "Guidance interval",
              "Stochastic samplers sharpen more"}
    assert {p.name for p in load_lab_presets()} == tested


@pytest.mark.parametrize("text, field", [
    ('name = "x"\ndescription = "y"\ncolour = 1\n[request]\nprompt = "red"\n[lab]\nscales = [1]\nn_seeds = 4\n',
     "colour"),
    ('name = "x"\ndescription = "y"\n[request]\nprompt = "red"\n[lab]\nscales = [1]\nn_seeds = 4\nseeds = 3\n',
     "lab.seeds"),
    ('name = "x"\ndescription = "y"\n[request]\nprompt = "red"\nguidance_sclae = 3\n[lab]\nscales = [1]\nn_seeds = 4\n',
     "request.guidance_sclae"),
    ('name = "x"\ndescription = "y"\n[request]\nprompt = "red"\n[lab]\nscales = [1]\nn_seeds = 4096\n', "lab.n_seeds"),
    ('name = "x"\ndescription = "y"\n[request]\nprompt = "red"\n[lab]\nn_seeds = 4\n', "lab.scales"),
    ('name = "x"\n[request]\nprompt = "red"\n[lab]\nscales = [1]\nn_seeds = 4\n', "description"),
])
def test_a_bad_lab_preset_is_refused_naming_the_field(tmp_path, text, field) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(PresetError) as info:
        load_lab_preset(path)
    assert info.value.field == field

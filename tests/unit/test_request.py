"""Every validation rule of GenerationRequest: one test each, and each names its field."""

import math

import pytest

from pipeline import GenerationRequest, RequestError

GOOD = dict(prompt="a watercolor painting of an otter", width=64, height=96, steps=4, seeds=(1, 2))


def make(**changes):
    return GenerationRequest(**{**GOOD, **changes})


def test_good_request_is_accepted_and_seeds_list_becomes_tuple():
    request = make(seeds=[3, 4])
    assert request.seeds == (3, 4)
    assert GenerationRequest.from_dict(request.to_dict()) == request


def expect_error(field, **changes):
    with pytest.raises(RequestError) as info:
        make(**changes)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}:")
    return str(info.value)


@pytest.mark.parametrize("steps", [0, 201, -3])
def test_steps_out_of_range(steps):
    assert "1 to 200" in expect_error("steps", steps=steps)


def test_steps_not_integer():
    expect_error("steps", steps=2.5)


@pytest.mark.parametrize("scale", [math.nan, math.inf, -math.inf])
def test_guidance_scale_not_finite(scale):
    assert "finite" in expect_error("guidance_scale", guidance_scale=scale)


@pytest.mark.parametrize("scale", [-0.5, 50.5])
def test_guidance_scale_out_of_range(scale):
    assert "0.0 to 50.0" in expect_error("guidance_scale", guidance_scale=scale)


@pytest.mark.parametrize("field", ["width", "height"])
def test_size_not_multiple_of_8(field):
    assert "multiple of 8" in expect_error(field, **{field: 100})


@pytest.mark.parametrize("field", ["width", "height"])
@pytest.mark.parametrize("value", [56, 2056])
def test_size_out_of_range(field, value):
    assert "64 to 2048" in expect_error(field, **{field: value})


def test_no_seeds():
    assert "1 to 16" in expect_error("seeds", seeds=())


def test_too_many_seeds():
    expect_error("seeds", seeds=tuple(range(17)))


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, True])
def test_seed_out_of_range(seed):
    expect_error("seeds", seeds=(1, seed))


def test_unknown_mode():
    assert "cfg" in expect_error("mode", mode="cfgg")


def test_unknown_scheduler():
    assert "dpmpp_2m" in expect_error("scheduler", scheduler="heun")


def test_unknown_uncond():
    assert "zeros" in expect_error("uncond", uncond="noise")


@pytest.mark.parametrize("eta", [-0.1, 1.5, math.nan])
def test_eta_out_of_range(eta):
    expect_error("eta", eta=eta)


def test_empty_prompt_where_needed():
    expect_error("prompt", prompt="   ")


def test_empty_prompt_allowed_for_unconditional_only():
    assert make(prompt="", mode="uncond_only").prompt == ""


def test_negative_direction_needs_negative_prompt():
    expect_error("negative_prompt", mode="negative_direction", negative_prompt="")


def test_prompt_must_be_text():
    expect_error("prompt_2", prompt_2=None)


def test_from_dict_rejects_unknown_key():
    with pytest.raises(RequestError) as info:
        GenerationRequest.from_dict({**GOOD, "cfg_scale": 7})
    assert info.value.field == "cfg_scale"


def test_request_error_is_a_value_error():
    assert issubclass(RequestError, ValueError)

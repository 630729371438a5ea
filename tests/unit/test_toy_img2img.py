"""img2img in the toy world: it snaps to its data, and from a data item strength visibly matters.

The page's note (`ui.render.TOY_IMG2IMG`) states what the start item gives at each strength on seeds 1 and 2 with
the page's defaults; each claim is checked here on those seeds.
"""

from __future__ import annotations

import pytest
from PIL import Image, ImageDraw

from pipeline import GenerationRequest, generate
from pipeline.models.toy import DEFAULT_ADHERENCE, draw, images_to_latents, landings
from ui.render import TOY_IMG2IMG, TOY_START_ITEM

SIZE = 256


def landed(pipe, image: Image.Image, strength: float) -> list[str]:
    """What seeds 1 and 2 land on from `image` with "red circle" and the page's defaults; each is a data item."""
    request = GenerationRequest(prompt="red circle", seeds=(1, 2), width=SIZE, height=SIZE, init_image=image,
                                strength=strength, prompt_adherence=DEFAULT_ADHERENCE)
    spots = landings(pipe, list(generate(pipe, request))[-1].pred_x0)
    assert all(spot.on_data for spot in spots)
    return [f"{s.item.size} {s.item.colour} {s.item.shape}" for s in spots]


def test_the_note_names_the_start_item():
    assert TOY_START_ITEM.caption == "big blue square, top left" and TOY_START_ITEM.caption in TOY_IMG2IMG


@pytest.mark.parametrize("strength", [0.1, 0.3, 0.5, 0.7])
def test_up_to_0_7_the_start_item_stays(toy_pipe, strength):
    assert "up to 0.7 keeps the big blue square on both seeds" in TOY_IMG2IMG
    assert landed(toy_pipe, draw(TOY_START_ITEM, SIZE, SIZE), strength) == ["big blue square"] * 2


def test_at_0_8_and_0_9_the_prompt_takes_over(toy_pipe):
    start = draw(TOY_START_ITEM, SIZE, SIZE)
    assert "at 0.8 seed 1 turns into a big blue circle" in TOY_IMG2IMG
    assert landed(toy_pipe, start, 0.8) == ["big blue circle", "big blue square"]
    assert "at 0.9 neither is left (a big green square, a big red circle)" in TOY_IMG2IMG
    assert landed(toy_pipe, start, 0.9) == ["big green square", "big red circle"]


def test_an_image_outside_the_data_snaps_to_an_item_at_any_strength(toy_pipe):
    """A hand-drawn blue square in the middle is no data item; what comes out is one, even at strength 0.1."""
    image = Image.new("RGB", (SIZE, SIZE), (128, 128, 128))
    ImageDraw.Draw(image).rectangle((80, 80, 176, 176), fill=(40, 90, 225))
    assert "snaps to its data" in TOY_IMG2IMG
    assert not landings(toy_pipe, images_to_latents([image]).view(1, 4, SIZE // 8, SIZE // 8))[0].on_data
    for strength in (0.1, 0.3, 0.6):
        landed(toy_pipe, image, strength)  # each seed on a data item

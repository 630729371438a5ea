"""A run on a worker streams every step in order, and shows what the same run in-process shows."""

import io

from pipeline.metadata import read_settings
from pipeline.previews import make_preview_decoder
from serving.protocol import RunSpec, unpack

from .helpers import in_process, pixels, stream, toy_request

JPEG_MEAN_LEVELS = 2.0  # previews are JPEGs (quality 90): mean absolute difference in 8-bit levels, measured ~0.6


def test_a_run_streams_every_step_in_order_and_equals_the_in_process_run(handle, toy_pipe):
    request = toy_request(steps=6, seeds=(3, 4))
    payloads = stream(handle, RunSpec(request, preview="linear", record_every=1))
    assert [p["step"] for p in payloads] == list(range(1, 7)) and all(p["total"] == 6 for p in payloads)
    events = in_process(toy_pipe, request)
    final = payloads[-1]
    for png, image, seed in zip(final["pngs"], events[-1].images, request.seeds):  # PNGs: lossless, exactly equal
        assert (pixels(png) == pixels(image)).all()
        assert read_settings(io.BytesIO(png)) == (request, seed)  # the settings travel in the PNG
    assert unpack(final["record"]).latents.equal(events[-1].latents)  # the final latents: max difference 0.0
    decoder = make_preview_decoder("linear", toy_pipe)
    for payload, event in zip(payloads, events):
        assert payload["guidance_x0"] == [float(n) for n in event.guidance_x0]
        for jpeg, image in zip(payload["previews"], decoder(event.pred_x0)):
            assert abs(pixels(jpeg) - pixels(image)).mean() < JPEG_MEAN_LEVELS

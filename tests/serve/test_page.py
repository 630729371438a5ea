"""The page on the Ray backend, through its own API: a run looks as it does in-process, Stop reaches the worker
within a step, and 8 clients at once each get their own seeds' images."""

import concurrent.futures
import socket
import time

import pytest

from pipeline.models import ToyPreviewDecoder
from pipeline.presets import load_presets
from serving.cluster import page_concurrency

from .conftest import REPLICAS
from .helpers import in_process, pixels, toy_request

STATUS = 1  # the API's outputs: RUN_OUTPUTS without the History state
RUN_ID = 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def page(handle, toy_pipe, tmp_path_factory):
    from gradio_client import Client

    from serving.frontend import RemoteRuns
    from ui import Handlers, build_demo, render

    handlers = Handlers(toy_pipe, taesd=ToyPreviewDecoder(toy_pipe.vae), model_name="toy", presets=load_presets(),
                        output_dir=tmp_path_factory.mktemp("serve-outputs"))
    handlers.remote = remote = RemoteRuns(handle)
    demo = build_demo(handlers, banner=render.banner("toy", None), default_size=128)
    demo.queue(default_concurrency_limit=page_concurrency(REPLICAS))
    demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True)
    try:
        client = Client(demo.local_url, download_files=False, verbose=False)  # one session: one run at a time
        client.runs = remote
        yield client
    finally:
        demo.close()


def steps_of(handle, tag: str) -> int:
    """The steps the worker running `tag` has run (asked until the answer comes from that replica)."""
    counts = handle.options(multiplexed_model_id="128x128-euler-200")  # routed to the replica running that shape
    for _ in range(20):
        steps = counts.steps_run.remote().result()
        if tag in steps:
            return steps[tag]
    raise AssertionError(f"no replica knows the run {tag}")


def run(client, **settings):
    job = client.submit(**{"width": 128, "height": 128, "num_seeds": 1, **settings}, api_name="/generate")
    outputs = list(job)
    assert job.exception() is None, job.exception()
    return outputs


def test_the_page_shows_a_workers_run_as_its_own(page, toy_pipe):
    outputs = run(page, prompt="a blue square", steps=5, seed=7, num_seeds=2)
    last = outputs[-1]
    assert "5/5" in last[STATUS] or "Done" in last[STATUS], last[STATUS]
    gallery, downloads = last[0], last[4]
    expected = in_process(toy_pipe, toy_request(prompt="a blue square", steps=5, seeds=(7, 8)))[-1].images
    assert len(downloads) == 2
    for item, image in zip(downloads, expected):
        assert (pixels(open(item["path"], "rb").read()) == pixels(image)).all()
    assert len(gallery) == 2


def test_stop_through_the_page_ends_the_workers_run_within_a_step(page, handle):
    job = page.submit(prompt="a red circle", steps=200, seed=1, width=128, height=128, num_seeds=1,
                      api_name="/generate")
    run_id = None
    while run_id is None:
        time.sleep(0.05)
        outputs = job.outputs()
        run_id = outputs[0][RUN_ID] if outputs else None
    while len(job.outputs()) < 3:  # a few steps in
        time.sleep(0.01)
    tag = page.runs.tags[-1]
    page.predict(run_id, api_name="/stop")
    at_stop = steps_of(handle, tag)
    time.sleep(1.0)  # the worker would have run ~20 more steps by now
    after = steps_of(handle, tag)
    list(job)
    status = job.outputs()[-1][STATUS]
    assert after - at_stop <= 1 and after < 200, (at_stop, after)
    assert "Stopped at step" in status, status


def test_eight_clients_at_once_each_get_their_own_seeds(page, toy_pipe):
    from gradio_client import Client

    """Eight runs interleave on the workers (prompts encoded concurrently on one replica: never the tokenizer's
    "Sizes of tensors must match" failure), and each gets exactly the images of its own seed and prompt."""
    prompts = ["a red circle", "a blue square", "a green triangle", "a yellow star"]

    def client(k):
        own = Client(page.src, download_files=False, verbose=False)  # a session each, as 8 people have
        last = run(own, prompt=prompts[k % 4], steps=4, seed=100 + k)[-1]
        downloads = last[4]
        assert isinstance(downloads, list), (last[STATUS], downloads)
        return (downloads[0] if isinstance(downloads, list) else downloads)["path"]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(client, range(8)))
    for k, path in enumerate(paths):
        expected = in_process(toy_pipe, toy_request(prompt=prompts[k % 4], steps=4, seeds=(100 + k,)))[-1].images[0]
        assert (pixels(open(path, "rb").read()) == pixels(expected)).all(), k

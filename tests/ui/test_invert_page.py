"""The Invert tab's words about what it shows (issue 18, point 12), called directly on the toy world: the caption
under "Recovered noise" gives the noise's measured statistics and says why it can look like the picture, and a new
upload clears what described the last image."""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline import GenerationRequest, generate
from ui import Handlers
from ui.invert_tab import Inversions


@pytest.fixture(scope="module")
def toy_image(toy_pipe):
    size = toy_pipe.default_sample_size * toy_pipe.vae_scale_factor
    request = GenerationRequest(prompt="red circle", seeds=(1,), steps=30, width=size, height=size)
    return list(generate(toy_pipe, request))[-1].images[0]


def test_the_recovered_noise_caption_says_what_it_shows_and_why(toy_pipe, toy_image, tmp_path):
    """A data image of the toy inverts to an x_T that looks like the image itself (issue 18): far less spread than
    Gaussian noise and correlated with the image's latents. The caption gives both numbers and the reason."""
    from pipeline.inversion import invert, noise_statistics

    inversions = Inversions(Handlers(toy_pipe, model_name="toy", output_dir=tmp_path))
    path = tmp_path / "seed-1.png"
    toy_image.save(path)
    *_, last = inversions.invert(str(path), "red circle", 25, 1.0)
    inversion = last[3]
    std, correlation = noise_statistics(inversion)
    assert std < 0.5 and correlation > 0.1, (std, correlation)  # what the learner sees: the picture, not speckle
    caption = inversions.noise_caption(inversion)
    assert f"σ = {std:.2f} (fresh noise: 1)" in caption and f"{correlation:+.2f} (fresh noise: about 0)" in caption
    assert "DDIM inversion is deterministic" in caption and "toy world it looks like the picture itself" in caption
    assert inversions.noise_caption(None) == ""

    # The statistics themselves: fresh noise has spread 1 and no correlation with the image.
    import dataclasses

    import torch

    fresh = dataclasses.replace(inversion, noise=torch.randn(inversion.noise.shape, generator=torch.Generator().manual_seed(0)))
    fresh_std, fresh_corr = noise_statistics(fresh)
    assert abs(fresh_std - 1) < 0.1 and abs(fresh_corr) < 0.1, (fresh_std, fresh_corr)


def test_a_new_upload_clears_the_last_images_results(toy_pipe, tmp_path):
    """Issue 18: after a new upload the previous image's error curve and table stayed on screen."""
    inversions = Inversions(Handlers(toy_pipe, model_name="toy", output_dir=tmp_path))
    noise, reconstruction, result, last, caption, plot, table, status = inversions.clear()
    assert noise is None and reconstruction is None and last is None and caption == ""
    assert "Upload an image" in result and "Press **Error curve**" in status
    assert isinstance(plot, pd.DataFrame) and plot.empty and isinstance(table, pd.DataFrame) and table.empty
    assert list(table.columns) == ["steps", "guidance", "PSNR (dB)", "latent MSE"]

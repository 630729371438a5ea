"""Which words drive which pixels, by ablation: the change in the clean-image estimate x̂₀ when one word is
dropped from the prompt, at one step of a run.

At the asked step the run's own noisy latents x_t are kept, and the model predicts again with the prompt and
with each one-word-shorter prompt (one extra UNet row per word, in one denoiser call): x̂₀(prompt) −
x̂₀(prompt without w) is what word w adds to the model's idea of the image there. Unlike cross-attention maps
(`pipeline.attention`) it needs no attention layers, so it works in the toy world, where it is exact: the toy's
denoiser is the posterior mean over its data items, and dropping "left" widens the items from the left-placed
ones to both places, so x̂₀ loses mass on the left and gains it on the right. It works on a real SDXL alike.

Early steps show it best: late in a run x_t already decides the image, and every prompt's x̂₀ is nearly that.
The prediction compared is the prompt's own (the conditional one), not the guided one: for CFG the guided
difference is that times the scale.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

from .conditioning import encode
from .decompose import pred_x0
from .denoiser import Conditioning, Denoiser, Layout
from .loop import denoise
from .request import GenerationRequest, RequestError


def prompt_words(text: str) -> list[str]:
    """The words of a prompt, split at white space (punctuation stays with its word)."""
    return text.split()


def without_word(text: str, k: int) -> str:
    """The prompt with its k-th (0-based) word dropped."""
    words = prompt_words(text)
    return " ".join(words[:k] + words[k + 1:])


def shown_word(word: str) -> str:
    """A word as the page names it: without the punctuation it carries ("circle," -> "circle")."""
    return re.sub(r"^\W+|\W+$", "", word) or word


@dataclass(frozen=True, slots=True)
class Dropped:
    """One ablation: which prompt field lost which word, and the prompt pair the model then saw."""

    field: str  # "prompt" or "prompt_2"
    index: int  # the word's position among that prompt's words
    word: str
    prompt: str
    prompt_2: str


def ablations(request: GenerationRequest) -> list[Dropped]:
    """One ablation per word of Prompt, and of Prompt 2 where it is set. An empty Prompt 2 sends Prompt to both
    encoders (diffusers' rule), so dropping a word of Prompt then drops it from both."""
    out = [Dropped("prompt", k, w, without_word(request.prompt, k), request.prompt_2)
           for k, w in enumerate(prompt_words(request.prompt))]
    if request.prompt_2:
        out += [Dropped("prompt_2", k, w, request.prompt, without_word(request.prompt_2, k) or " ")
                for k, w in enumerate(prompt_words(request.prompt_2))]
    return out


@dataclass(frozen=True)
class Ablation:
    """Word ablation at one step for one seed. Tensors are UNet latents on the CPU, float32."""

    step: int  # 1-based
    seed: int
    dropped: tuple[Dropped, ...]
    x0: Tensor  # (1, 4, h, w): x̂₀ with the whole prompt
    dropped_x0: Tensor  # (W, 4, h, w): x̂₀ with each word dropped, in `dropped` order

    @property
    def delta(self) -> Tensor:
        """(W, 4, h, w): what each word adds to x̂₀, x̂₀(prompt) − x̂₀(prompt without it)."""
        return self.x0 - self.dropped_x0

    def heat(self) -> Tensor:
        """(W, h, w): the size of each word's change per latent pixel (root mean square over the channels)."""
        return self.delta.pow(2).mean(dim=1).sqrt()


def alpha_at(alphas_cumprod: Tensor, t: Tensor) -> float:
    """alpha_bar at a (possibly fractional) timestep, interpolating log sigma between training steps as diffusers'
    sigma schedulers place fractional timesteps (`_sigma_to_t`); exact at integer timesteps."""
    acp = alphas_cumprod.double()
    log_sigmas = ((1 - acp) / acp).log() / 2
    t = float(t)
    low = min(int(t), len(acp) - 2)
    frac = t - low
    log_sigma = (1 - frac) * log_sigmas[low] + frac * log_sigmas[low + 1]
    return float(1 / (1 + (2 * log_sigma).exp()))


class _Capture:
    """A denoiser watcher that keeps the model input, timestep and per-row conditioning of `seed` at `step`."""

    def __init__(self, seed: int, step: int) -> None:
        self.seed, self.step = seed, step
        self.found: tuple[Tensor, Tensor, Conditioning] | None = None

    @contextlib.contextmanager
    def watch(self, unet, layout: Layout, model_input: Tensor, t: Tensor, conditioning: Conditioning) -> Iterator[None]:
        if layout.step + 1 == self.step and self.found is None:
            # any of the seed's rows: each part of a step predicts from the same latents
            row = next(b.start + b.seeds.index(self.seed) for b in layout.blocks if self.seed in b.seeds)
            self.found = (model_input[row:row + 1].clone(), t, conditioning.rows(slice(row, row + 1)))
        yield

    def chunk(self, rows: slice) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


def _check(request: GenerationRequest, step: int, seed: int) -> None:
    if seed not in request.seeds:
        raise RequestError("seed", f"must be one of the run's seeds {list(request.seeds)}, got {seed}")
    if not 1 <= step <= request.steps:
        raise RequestError("step", f"must be from 1 to {request.steps}, got {step}")
    if not prompt_words(request.prompt):
        raise RequestError("prompt", "word ablation needs a prompt with at least one word")


@torch.no_grad()
def word_ablation(pipe, request: GenerationRequest, step: int, seed: int | None = None) -> Ablation:
    """Run `request` for one seed (by default its first) up to 1-based `step`, then predict x̂₀ there with the
    whole prompt and with each word dropped (`ablations`): one denoiser call of W + 1 rows."""
    seed = request.seeds[0] if seed is None else seed
    _check(request, step, seed)
    one = dataclasses.replace(request, seeds=(seed,))
    capture = _Capture(seed, step)
    events = denoise(pipe, one, watchers=[capture])
    try:
        for _ in events:
            if capture.found is not None:
                break
    finally:
        events.close()  # the rest of the run is not needed
    if capture.found is None:
        raise RequestError("step", f"step {step} ran no model pass for seed {seed} (e.g. a zero-init step)")
    x, t, row = capture.found
    dropped = ablations(request)
    embeds = [encode(pipe, request.prompt, request.prompt_2)] + [encode(pipe, d.prompt, d.prompt_2) for d in dropped]
    n = len(embeds)
    conditioning = Conditioning(torch.cat([e.prompt_embeds for e in embeds]), torch.cat([e.pooled for e in embeds]),
                                row.time_ids.repeat(n, 1), None if row.adherence is None else row.adherence.repeat(n))
    eps = Denoiser(pipe)(x.repeat(n, 1, 1, 1), t, conditioning)  # (W + 1, 4, h, w)
    alpha = alpha_at(pipe.scheduler.alphas_cumprod, t)
    x0 = pred_x0(eps.double(), x.double(), alpha, pipe.scheduler.config.prediction_type).float().cpu()
    return Ablation(step, seed, tuple(dropped), x0[:1], x0[1:])

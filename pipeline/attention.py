"""Which words drive which pixels: cross-attention maps per token position (DAAM, Tang et al. 2022, arXiv
2210.04885), recorded through the `Denoiser` seam.

In every cross-attention layer (`attn2`) of SDXL's UNet, each latent pixel's query attends over the 77 token
positions of the prompt embeddings: softmax(Q Kᵀ / √d) is, per pixel and head, a distribution over the positions
(it sums to 1). DAAM's map for a word is that weight, averaged over heads, upsampled from each layer's token grid
to the latent size, and summed over layers and steps: where in the image the model read that word.

SDXL's twist: its prompt embeddings concatenate the two text encoders' hidden states per token position
(CLIP ViT-L's 768 values, then OpenCLIP bigG's 1280: `encode_prompt`), so position i's key mixes token i of
Prompt and token i of Prompt 2. One map serves both; where the prompts differ, a map cannot be told apart
into the two tokens it holds.

The recorder swaps only the `attn2` processors for `RecordingAttnProcessor`, a subclass of diffusers'
`AttnProcessor2_0` that returns exactly what its parent returns (the run's latents are bit-identical: tested),
and for the rows asked for recomputes the attention weights beside it. Which rows those are comes from the
loop's own batch layout (`pipeline.denoiser.Layout`: which rows hold which request's prediction, per seed), so
Perp-Neg's three parts, single-pass steps and micro-batching need no guess about [uncond; cond] halves.

The toy world's denoiser has no attention layers: `pipeline.attribution.word_ablation` is its way (and a real
model's too) to ask which region a word controls.
"""

from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import dataclass, field
from typing import Iterator

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import Tensor
from torch.nn import functional as F

from .denoiser import Conditioning, Layout
from .guidance import COND, Part

MAX_DOWNSAMPLING = 8  # 2**8: far deeper than any UNet's token grid below its latents


def token_grid(tokens: int, height: int, width: int) -> tuple[int, int]:
    """The (h, w) grid a layer's `tokens` queries lie on, for latents of `height` x `width`: the latents halved
    k times, as the UNet's stride-2 convolutions (padding 1) round, ceil(n / 2). From the latent's own aspect,
    not a square root, so non-square sizes work."""
    for k in range(MAX_DOWNSAMPLING + 1):
        h, w = math.ceil(height / 2**k), math.ceil(width / 2**k)
        if h * w == tokens:
            return h, w
    raise ValueError(f"attention: {tokens} queries lie on no halving of the {height}x{width} latent grid")


@dataclass(frozen=True, slots=True)
class Watch:
    """One prediction whose attention is recorded: request (lane) `lane`'s part `part` for `seed`."""

    seed: int
    part: Part = COND
    lane: int = 0


@dataclass
class AttentionMaps:
    """What was recorded for one `Watch`: per token position, summed over layers and steps, (77, H/f, W/f), and
    per step (1-based, as events count them), summed over layers. Each layer adds 1 per pixel over the
    positions (a softmax), so a step's maps sum to `cross_attention_layers(unet)` at every pixel."""

    total: Tensor | None = None
    steps: dict[int, Tensor] = field(default_factory=dict)

    def add(self, step: int, probs: Tensor) -> None:
        """Add one layer's (77, H/f, W/f) weights at 1-based `step`."""
        self.steps[step] = probs if step not in self.steps else self.steps[step] + probs
        self.total = probs.clone() if self.total is None else self.total + probs


class RecordingAttnProcessor(AttnProcessor2_0):
    """diffusers' `AttnProcessor2_0`, unchanged in what it returns, that also hands the attention weights of
    the recorder's current rows to it."""

    def __init__(self, recorder: AttentionRecorder) -> None:
        super().__init__()
        self.recorder = recorder

    def __call__(self, attn: Attention, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, *args, **kwargs) -> Tensor:
        out = super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        rows = self.recorder.rows()
        if rows and encoder_hidden_states is not None:
            index = torch.tensor([row for row, _ in rows], device=hidden_states.device)
            probs = attention_probs(attn, hidden_states[index], encoder_hidden_states[index])
            self.recorder.add([watch for _, watch in rows], probs)
        return out


def attention_probs(attn: Attention, hidden_states: Tensor, context: Tensor) -> Tensor:
    """softmax(Q Kᵀ / √d) over the key positions, averaged over heads: (n, queries, keys), in float32.

    The same projections as `AttnProcessor2_0` (its group norm, cross norm and q/k norms where a layer has
    them; SDXL's have none); computed beside it for the watched rows only. No mask: SDXL passes none."""
    if hidden_states.ndim == 4:
        n, c, h, w = hidden_states.shape
        hidden_states = hidden_states.view(n, c, h * w).transpose(1, 2)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    if attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    query, key = attn.to_q(hidden_states), attn.to_k(context)
    n, head_dim = query.shape[0], key.shape[-1] // attn.heads
    query = query.view(n, -1, attn.heads, head_dim).transpose(1, 2).float()  # (n, heads, queries, d)
    key = key.view(n, -1, attn.heads, head_dim).transpose(1, 2).float()  # (n, heads, keys, d)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    scores = query @ key.transpose(-1, -2) / math.sqrt(head_dim)  # what SDPA's default scale is
    return scores.softmax(dim=-1).mean(dim=1)


class AttentionRecorder:
    """A `Denoiser` watcher: records the cross-attention maps of the watched predictions.

    `watches`: which request's which prediction for which seed (by default the prompt's, `COND`); `steps`:
    1-based steps to record (None: every step). Pass it to `generate(..., watchers=[recorder])`; after the run
    `maps[watch]` holds what was recorded. A watch that a step does not compute (a single-pass step that runs
    only the baseline, the zero-init steps of CFG-Zero*) adds nothing at that step.
    """

    def __init__(self, watches: tuple[Watch, ...], steps: tuple[int, ...] | None = None) -> None:
        if not watches:
            raise ValueError("watches: record at least one prediction")
        self.watches, self.steps = tuple(watches), None if steps is None else frozenset(steps)
        self.maps: dict[Watch, AttentionMaps] = {w: AttentionMaps() for w in self.watches}
        self.current: list[tuple[int, Watch]] = []  # (row within the running micro-batch, watch)
        self._call: list[tuple[int, Watch]] = []  # (row within the denoiser call, watch)
        self._size: tuple[int, int] = (0, 0)
        self._step = 0
        self._pending: dict[tuple[Watch, int, int], Tensor] = {}  # this call's maps per watch and token grid
        self._thread: int | None = None  # the thread whose denoiser call is being watched

    @contextlib.contextmanager
    def watch(self, unet: torch.nn.Module, layout: Layout, model_input: Tensor, t: Tensor,
              conditioning: Conditioning) -> Iterator[None]:
        """Around one denoiser call: find the watched rows; where there are any, swap in the recording
        processors for the call and put the originals back after (also on an error)."""
        step = layout.step + 1
        rows = [(layout.row(w.lane, w.part, w.seed), w) for w in self.watches]
        self._call = [(row, w) for row, w in rows if row is not None]
        if not self._call or (self.steps is not None and step not in self.steps):
            self._call = []
            yield
            return
        self._size, self._step, self._thread = tuple(model_input.shape[-2:]), step, threading.get_ident()
        try:
            with recording_processors(unet, RecordingAttnProcessor(self)):
                yield
            self._flush()
        finally:
            self._call, self._pending, self._thread = [], {}, None

    @contextlib.contextmanager
    def chunk(self, rows: slice) -> Iterator[None]:
        """Around one micro-batch: which of its rows are watched."""
        self.current = [(row - rows.start, w) for row, w in self._call if rows.start <= row < rows.stop]
        try:
            yield
        finally:
            self.current = []

    def rows(self) -> list[tuple[int, Watch]]:
        """The watched rows of the running micro-batch, for a call on the watched call's own thread; none for any
        other. The swapped processors belong to a UNet that another thread may be running at the same moment
        (another session's run): its rows are not ours to record, nor to index."""
        return self.current if threading.get_ident() == self._thread else []

    def add(self, watches: list[Watch], probs: Tensor) -> None:
        """One layer's (n, queries, 77) weights for the n watched rows, added per watch on the layer's own token
        grid; `_flush` upsamples each grid's sum once per call (upsampling is linear: the sum of the upsampled
        maps is the upsampled sum), which keeps the cost per layer to the weights themselves."""
        h, w = token_grid(probs.shape[1], *self._size)
        grid = probs.transpose(1, 2).reshape(len(watches), probs.shape[2], h, w)
        for watch, maps in zip(watches, grid):
            key = (watch, h, w)
            self._pending[key] = maps if key not in self._pending else self._pending[key] + maps

    def _flush(self) -> None:
        """The call's maps onto the latent grid, added to its step. Bilinear weights sum to 1, so each pixel's
        weights over the positions still sum to 1 per layer."""
        for (watch, h, w), maps in self._pending.items():
            if (h, w) != self._size:
                maps = F.interpolate(maps[None], size=self._size, mode="bilinear", align_corners=False)[0]
            self.maps[watch].add(self._step, maps)


@contextlib.contextmanager
def recording_processors(unet: torch.nn.Module, processor: AttnProcessor2_0) -> Iterator[None]:
    """Swap every cross-attention processor (`attn2`) of `unet` for `processor`; restore the originals after.

    The swap is the shared UNet's for the call: another thread's call meanwhile runs through the recording
    processor too, which returns what the original returns and records nothing for it (`AttentionRecorder.rows`).
    What the swap cannot guard against is a second swapper (a model variant's context) entering and leaving
    interleaved with this one on another thread; the app runs its GPU handlers one at a time (`concurrency_id`)."""
    if not hasattr(unet, "attn_processors"):
        raise ValueError("attention: this model has no attention layers (the toy world's exact denoiser reads "
                         "the words directly); use word ablation (pipeline.attribution) instead")
    original = dict(unet.attn_processors)
    swapped = {name: processor if name.endswith("attn2.processor") else proc for name, proc in original.items()}
    unet.set_attn_processor(swapped)
    try:
        yield
    finally:
        unet.set_attn_processor(dict(original))


def cross_attention_layers(unet: torch.nn.Module) -> int:
    """How many cross-attention layers the UNet has: what one step adds to each map's per-pixel sum."""
    return sum(name.endswith("attn2.processor") for name in getattr(unet, "attn_processors", {}))


# --- token positions and words ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Position:
    """Token position i of the prompt embeddings: encoder 1's token of Prompt there and encoder 2's of Prompt 2
    (Prompt, where Prompt 2 is empty: diffusers' rule). One attention map serves both."""

    index: int
    token: str
    token_2: str


@dataclass(frozen=True, slots=True)
class Word:
    """A word of Prompt (encoder 1's tokens up to a word end) at its positions, with what encoder 2 holds there."""

    text: str
    text_2: str
    positions: tuple[int, ...]

    @property
    def mixed(self) -> bool:
        """Whether encoder 2 holds something else at these positions: the map then serves both."""
        return self.text != self.text_2


def _tokens(tokenizer, text: str) -> list[str]:
    ids = tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
    return tokenizer.convert_ids_to_tokens(ids)


def positions(pipe, prompt: str, prompt_2: str = "") -> list[Position]:
    """Each position up to the later of the two end tokens, labelled with both tokenizers' tokens."""
    first, second = _tokens(pipe.tokenizer, prompt), _tokens(pipe.tokenizer_2, prompt_2 or prompt)
    ends = [tokens.index(end) if end in tokens else len(tokens) - 1
            for tokens, end in ((first, pipe.tokenizer.eos_token), (second, pipe.tokenizer_2.eos_token))]
    return [Position(i, first[i], second[i]) for i in range(max(ends) + 1)]


def _plain(token: str) -> str:
    return token.replace("</w>", "")


def words(pipe, prompt: str, prompt_2: str = "") -> list[Word]:
    """Prompt's words by encoder 1's tokens (a BPE token ending in "</w>" ends a word; an added whole-word token is
    one), each with the text encoder 2 holds at the same positions. The start and end tokens are not words."""
    special = {pipe.tokenizer.bos_token, pipe.tokenizer.eos_token, pipe.tokenizer.pad_token}
    special_2 = {pipe.tokenizer_2.bos_token, pipe.tokenizer_2.eos_token, pipe.tokenizer_2.pad_token}
    added = set(pipe.tokenizer.get_added_vocab())
    out, current = [], []
    for p in positions(pipe, prompt, prompt_2):
        if p.token in special:
            continue
        current.append(p)
        if p.token.endswith("</w>") or p.token in added:
            out.append(Word("".join(_plain(q.token) for q in current),
                            "".join(_plain(q.token_2) for q in current if q.token_2 not in special_2),
                            tuple(q.index for q in current)))
            current = []
    return out


def word_map(maps: Tensor, word: Word) -> Tensor:
    """(77, h, w) maps -> (h, w): the word's positions summed (a word of several tokens holds several)."""
    return maps[list(word.positions)].sum(dim=0)

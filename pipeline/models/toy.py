"""The toy world: a real `StableDiffusionXLPipeline` whose UNet is the exact denoiser of a small captioned data set.

For a finite data set the best possible denoiser has a closed form: the posterior mean of the clean image over
the data items (the "ideal denoiser" of Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models"). A UNet that computes it behaves like a perfectly trained model of that data, so guidance
does to its pictures what the theory says, offline and in milliseconds.

The parts are SDXL-shaped, so the pipeline and our loop run on it unchanged:
- the data: coloured shapes on a neutral grey, drawn with PIL, captioned from `VOCABULARY`;
- two real CLIP tokenizers and text encoders whose penultimate hidden state (what SDXL reads) is each known
  word's own one-hot vector: every residual branch and the position embeddings are zero;
- `ToyUNet`: reads which words the prompt embeddings hold and returns the exact epsilon;
- `ToyVAE`: a fixed linear autoencoder (8x8 average pooling and a 3 -> 4 colour map; back, a bilinear image
  whose 8x8 block means are the latents' colours, so a decoded image encodes back to its latents);
- SDXL's scheduler config.

How the toy reads the two prompts: SDXL puts encoder 1's hidden states (Prompt) and encoder 2's (Prompt 2)
side by side in each token's embedding. The toy reads the words of each encoder's part and takes their union,
so a word counts whichever prompt it is in; with Prompt 2 empty, diffusers sends Prompt to both encoders.
`read_words` returns the two parts separately, for a page that shows what each encoder contributes.

Which items a prompt's words select: words name attributes (colour, shape, size, vertical and horizontal
place). An item matches when, for every attribute the prompt names, the item has one of the named values
("red blue circle" selects red and blue circles). No known word selects every item: the all-zero embedding
(SDXL's unconditional input) and the encoded empty prompt are both the unconditional model.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import DDPMScheduler, EulerDiscreteScheduler, StableDiffusionXLPipeline
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.image_processor import VaeImageProcessor
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.embeddings import TimestepEmbedding
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from PIL import Image, ImageDraw
from tokenizers import AddedToken
from torch import Tensor, nn
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from .sdxl import SDXL_SCHEDULER_CONFIG
from .tiny import text_config, tiny_tokenizer

DEFAULT_SIZE = 256  # px: a 30-step, 4-seed CFG run takes well under 2 s on 2 CPU cores (bench/bench_toy.py)

# Attribute -> its words, in the order captions use them. Every combination of values is one data item.
VOCABULARY: dict[str, tuple[str, ...]] = {
    "size": ("small", "big"),
    "colour": ("red", "green", "blue", "yellow"),
    "shape": ("circle", "square", "triangle"),
    "vertical": ("top", "bottom"),
    "horizontal": ("left", "right"),
}
WORDS: tuple[str, ...] = tuple(word for words in VOCABULARY.values() for word in words)
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 70), "blue": (40, 90, 225), "yellow": (240, 200, 30)}
BACKGROUND = (128, 128, 128)  # neutral grey: pixel value 0 in [-1, 1], hence latent 0
RADIUS = {"small": 0.12, "big": 0.22}  # of the shorter image side
PLACE = {"top": 1 / 3, "bottom": 2 / 3, "left": 1 / 3, "right": 2 / 3}  # centre, as a fraction of the side

# Text encoders: one hidden unit per word. Both encoders use the same layout; SDXL concatenates them per token.
HIDDEN_SIZE = 16  # >= len(WORDS)
PROJECTION_DIM = 8  # encoder 2's pooled projection (SDXL reads it; the exact denoiser does not)
ADDITION_TIME_EMBED_DIM = 8
WORD_THRESHOLD = 0.5  # a word's unit is 1 where the word is and 0 elsewhere
# How well the toy model learned its prompts (`item_prior`): at 0.5, conditional-only sampling follows the
# prompt on about half the seeds and CFG at 3 on most (measured in tests/unit/test_adherence.py).
DEFAULT_ADHERENCE = 0.5

# Autoguidance's weak model in the toy world (`ToyUNet.blurred`): the data blurred by this width (UNet latent
# units), each item's variance raised by its square. Measured in presets/13-autoguidance.toml's note.
WEAK_WIDTH = 0.5

# The VAE's colour map: rgb = latent @ LATENT_RGB_FACTORS (UNet latents, pixel values in [-1, 1]). Its columns
# are three columns of the orthogonal 4x4 Hadamard matrix / 2, so the encoder is its transpose, each latent
# channel mixes all three colours as SDXL's do, and a saturated colour's latents have about unit size. The
# fourth direction, (1, 1, 1, 1) / 2, is invisible: data items have none of it.
LATENT_RGB_FACTORS: tuple[tuple[float, ...], ...] = (
    (0.5, 0.5, 0.5),
    (-0.5, 0.5, -0.5),
    (0.5, -0.5, -0.5),
    (-0.5, -0.5, 0.5),
)
LATENT_RGB_BIAS: tuple[float, ...] = (0.0, 0.0, 0.0)


# --- the data set ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Item:
    """One data item: one value per attribute of `VOCABULARY`."""

    size: str
    colour: str
    shape: str
    vertical: str
    horizontal: str

    @property
    def caption(self) -> str:
        return f"{self.size} {self.colour} {self.shape}, {self.vertical} {self.horizontal}"

    @property
    def words(self) -> tuple[str, ...]:
        return (self.size, self.colour, self.shape, self.vertical, self.horizontal)


ITEMS: tuple[Item, ...] = tuple(Item(*values) for values in itertools.product(*VOCABULARY.values()))


def draw(item: Item, width: int = DEFAULT_SIZE, height: int = DEFAULT_SIZE) -> Image.Image:
    """The item's picture: its shape in its colour, size and place, on the neutral background."""
    image = Image.new("RGB", (width, height), BACKGROUND)
    pen = ImageDraw.Draw(image)
    r = RADIUS[item.size] * min(width, height)
    cx, cy = PLACE[item.horizontal] * width, PLACE[item.vertical] * height
    fill = COLOURS[item.colour]
    if item.shape == "circle":
        pen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif item.shape == "square":
        half = r * 0.89  # about a circle's area
        pen.rectangle((cx - half, cy - half, cx + half, cy + half), fill=fill)
    else:  # an upward equilateral triangle, its centroid at the centre
        side = r * 2.7  # about a circle's area
        h = side * math.sqrt(3) / 2
        pen.polygon([(cx, cy - 2 * h / 3), (cx - side / 2, cy + h / 3), (cx + side / 2, cy + h / 3)], fill=fill)
    return image


# (N items, W words): 1 where the word is in the item's caption; (W words, A attributes): 1 where the word is a
# value of the attribute.
ITEM_WORDS = torch.tensor([[float(word in item.words) for word in WORDS] for item in ITEMS])
WORD_GROUPS = torch.tensor([[float(word in words) for words in VOCABULARY.values()] for word in WORDS])


def matching_items(found: Tensor) -> Tensor:
    """(B, W) words found -> (B, N) bool: items that have, for each attribute the words name, a named value."""
    found = found.float()
    groups, has = WORD_GROUPS.to(found.device), ITEM_WORDS.to(found.device)
    named = (found @ groups) > 0  # (B, A)
    hit = torch.einsum("bw,nw,wa->bna", found, has, groups) > 0  # (B, N, A)
    return (hit | ~named[:, None, :]).all(dim=-1)


def caption_words(text: str) -> list[str]:
    """The known words of a caption or prompt, as the toy tokenizer splits it (unknown words are dropped)."""
    tokenizer = toy_tokenizer()
    return [token for token in tokenizer.convert_ids_to_tokens(tokenizer(text).input_ids) if token in WORDS]


# --- the tokenizer and text encoders -------------------------------------------------------------------


def toy_tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP BPE tokenizer (the tiny model's) with each vocabulary word added as one whole-word token.

    BPE merges cannot make a word one token here: merges written word by word collide ("r e" from "red"
    splits "green" into "g", "re", "e", "n"), and even merges learnt from the whole vocabulary build "right"
    inside "bright", since BPE sees only where a word ends. An added token with `single_word` matches only a
    word standing alone (case-insensitively: CLIP lowercases first); every other word falls apart into bytes,
    which embed to nothing.
    """
    tokenizer = tiny_tokenizer()
    tokenizer.add_tokens([AddedToken(word, single_word=True, normalized=True) for word in WORDS])
    return tokenizer


def toy_text_encoder(tokenizer: CLIPTokenizer, with_projection: bool) -> CLIPTextModel | CLIPTextModelWithProjection:
    """A CLIP text encoder in which each token's hidden state, at every layer, is its word's one-hot vector.

    SDXL reads the penultimate hidden state. Zero position embeddings and zero residual branches (each attention
    and MLP ends in a zero linear layer) leave it equal to the token embedding: word k's unit k, nothing for any
    other token (start, end, padding, unknown words).
    """
    config = text_config(tokenizer, PROJECTION_DIM, hidden_size=HIDDEN_SIZE, intermediate_size=HIDDEN_SIZE, heads=1,
                         layers=2)
    with torch.random.fork_rng(devices=[]):  # the initial weights are all overwritten below
        model = (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                for param in module.parameters():
                    param.zero_()
        embedding = model.get_input_embeddings().weight
        for k, word in enumerate(WORDS):
            embedding[tokenizer.convert_tokens_to_ids(word), k] = 1.0
    return model.eval()


def read_words(encoder_hidden_states: Tensor, hidden_size: int = HIDDEN_SIZE) -> tuple[Tensor, Tensor]:
    """(B, 77, 2 * hidden) prompt embeddings -> the words each encoder's part holds, two (B, W) bool tensors."""
    units = encoder_hidden_states[..., : len(WORDS)], encoder_hidden_states[..., hidden_size : hidden_size + len(WORDS)]
    first, second = (part.amax(dim=1) > WORD_THRESHOLD for part in units)
    return first, second


def check_adherence(value: Any) -> Any:
    """Refuse an adherence outside [0, 1] (a float or a tensor of them), naming the field."""
    values = torch.as_tensor(value, dtype=torch.float64)
    if values.numel() == 0 or bool(values.isnan().any()) or not bool(((values >= 0) & (values <= 1)).all()):
        raise ValueError(f"prompt_adherence: must be from 0 to 1, got {value!r}")
    return value


def _is_one(value: Any) -> bool:
    return isinstance(value, (int, float)) and value == 1


# --- the exact denoiser --------------------------------------------------------------------------------


def item_prior(allowed: Tensor, adherence: Tensor | float = 1.0) -> Tensor:
    """(B, N) prior weight of each item under a model that learned the prompt only partly: `adherence` a of the
    prompt's own items (uniform over the matching ones) and 1 - a of the whole data set (uniform over all N).

    That is the mixture p_a(x | c) = a p(x | c) + (1 - a) p(x): with probability 1 - a the model ignores the
    prompt, which is how an imperfect conditional model fails (Ho & Salimans 2022, section 4: its samples follow
    the prompt only partly, and guidance is what sharpens them). a = 1 is the exact data conditional. With no
    word named every item matches, so the unconditional prior stays uniform at any a. `adherence` is a float or
    a (B,) tensor, one value per row. Each row sums to 1.
    """
    allowed = allowed.to(torch.float64)
    a = torch.as_tensor(adherence, dtype=torch.float64, device=allowed.device).reshape(-1, 1)  # (B or 1, 1)
    return a * allowed / allowed.sum(dim=1, keepdim=True) + (1 - a) / allowed.shape[1]


def ideal_epsilon(x_t: Tensor, items: Tensor, allowed: Tensor, alpha_bar: Tensor, width: float = 0.0,
                  prior: Tensor | None = None) -> Tensor:
    """The exact noise prediction for data that is a mixture over `items`, each N(item, width^2 I).

    x_t (B, D) = sqrt(a) x0 + sqrt(1 - a) eps, with a = alpha_bar (B,); items (N, D); allowed (B, N) bool: the
    items each row may come from (its caption's); prior (B, N): each item's mixture weight (`item_prior`), by
    default uniform over the allowed items. Under item n, x_t ~ N(sqrt(a) z_n, v I) with
    v = a width^2 + 1 - a, so p(n | x_t) is a softmax of log prior_n - |x_t - sqrt(a) z_n|^2 / 2v, and
    E[x0 | x_t] = sum_n p(n | x_t) (z_n + k (x_t - sqrt(a) z_n)), k = sqrt(a) width^2 / v. With width 0 this is
    the ideal denoiser of Karras et al. (2022), a posterior-weighted mean of the items. Then
    eps = (x_t - sqrt(a) x0_hat) / sqrt(1 - a) (Ho et al. 2020, eq. 4 solved for eps).
    """
    a = alpha_bar[:, None]  # (B, 1)
    sqrt_a = a.sqrt()
    var = a * width**2 + (1 - a)
    # |x_t - sqrt(a) z_n|^2 without its |x_t|^2, which is the same for every n and cancels in the softmax.
    logits = (sqrt_a * (x_t @ items.T) - a * (items * items).sum(dim=1) / 2) / var  # (B, N)
    if prior is None:
        logits = logits.masked_fill(~allowed, -math.inf)
    else:  # an item of prior 0 (a = 1, not the prompt's) gets log 0 = -inf, exactly as the mask gives it
        logits = logits + prior.to(logits).log()
    weights = torch.softmax(logits, dim=1)
    mean_item = weights @ items  # (B, D)
    k = sqrt_a * width**2 / var
    x0_hat = mean_item + k * (x_t - sqrt_a * mean_item)
    return (x_t - sqrt_a * x0_hat) / (1 - a).sqrt()


# id(ToyUNet) -> the blur its weak model adds, per thread: a run's variant pass on one thread never blurs another
# thread's run of the same UNet (the Distribution lab and Explore share the model).
_BLUR = threading.local()


class ToyUNet(ModelMixin, ConfigMixin):
    """Called exactly as diffusers calls `UNet2DConditionModel`; returns the ideal denoiser's epsilon.

    The data items are drawn and encoded once per latent size, so any width and height works.
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int = DEFAULT_SIZE // 8,
        in_channels: int = 4,
        out_channels: int = 4,
        cross_attention_dim: int = 2 * HIDDEN_SIZE,
        addition_time_embed_dim: int = ADDITION_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim: int = 6 * ADDITION_TIME_EMBED_DIM + PROJECTION_DIM,
        time_cond_proj_dim: int | None = None,
        num_train_timesteps: int = SDXL_SCHEDULER_CONFIG["num_train_timesteps"],
        beta_start: float = SDXL_SCHEDULER_CONFIG["beta_start"],
        beta_end: float = SDXL_SCHEDULER_CONFIG["beta_end"],
        beta_schedule: str = SDXL_SCHEDULER_CONFIG["beta_schedule"],
        mixture_width: float = 0.0,
        prompt_adherence: float = 1.0,
    ) -> None:
        super().__init__()
        # diffusers checks the micro-conditioning's width against this layer (`_get_add_time_ids`). The exact
        # denoiser reads neither the pooled text nor the sizes, so it is never called.
        with torch.random.fork_rng(devices=[]):
            self.add_embedding = TimestepEmbedding(projection_class_embeddings_input_dim, 1)
        for param in self.add_embedding.parameters():
            nn.init.zeros_(param)
        train = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                              beta_schedule=beta_schedule)
        # Not a buffer: `pipe.to(dtype=float16)` must not round it. Moved to the sample's device as needed.
        self.alphas_cumprod = train.alphas_cumprod  # float32 (1000,), as diffusers keeps it
        self._items: dict[tuple, Tensor] = {}

    @contextlib.contextmanager
    def blurred(self, width: float = WEAK_WIDTH):
        """Within it (this thread only) the UNet is the exact denoiser of the *blurred* data: each item's Gaussian
        widened, its variance raised by width^2, so the mixture's width is sqrt(mixture_width^2 + width^2) and
        the closed form (`ideal_epsilon`) still holds. That is autoguidance's weak model in the toy world: the
        same data and prompts, learned worse, as a smaller or less trained network learns it (Karras et al.
        2024, arXiv 2406.02507, section 3: a weaker model whose errors resemble the main model's, only larger)."""
        if not width >= 0:
            raise ValueError(f"width: must be 0 or more, got {width}")
        blurs = _BLUR.__dict__.setdefault("widths", {})
        before = blurs.get(id(self))
        blurs[id(self)] = width
        try:
            yield self
        finally:
            if before is None:
                del blurs[id(self)]
            else:
                blurs[id(self)] = before

    @property
    def width(self) -> float:
        """The mixture width this thread's calls use: the config's, widened by a `blurred` context."""
        return math.hypot(self.config.mixture_width, _BLUR.__dict__.get("widths", {}).get(id(self), 0.0))

    @staticmethod
    def compute_dtype(device: torch.device) -> torch.dtype:
        """float64, so posterior weights at tiny noise levels stay exact; Apple's MPS has no float64."""
        return torch.float32 if device.type == "mps" else torch.float64

    def items(self, height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
        """(N, 4 * height * width): every data item's UNet latents at this latent size, in `compute_dtype`."""
        device = torch.device(device)
        key = (height, width, device)
        if key not in self._items:
            latents = images_to_latents([draw(item, 8 * width, 8 * height) for item in ITEMS])
            self._items[key] = latents.flatten(1).to(device=device, dtype=self.compute_dtype(device))
        return self._items[key]

    def alpha_bar(self, timestep: Tensor) -> Tensor:
        """alpha_bar at (possibly fractional) timesteps, interpolating log sigma linearly between training steps
        as k-diffusion's `DiscreteSchedule` and diffusers' `_sigma_to_t` do; exact at integer timesteps."""
        last = self.config.num_train_timesteps - 1
        if bool(((timestep < 0) | (timestep > last)).any()):
            raise ValueError(f"timestep: must be from 0 to {last}, got {timestep.tolist()}")
        alphas_cumprod = self.alphas_cumprod.to(device=timestep.device, dtype=timestep.dtype)
        log_sigmas = ((1 - alphas_cumprod) / alphas_cumprod).log() / 2
        low = timestep.floor().long().clamp(max=last - 1)
        frac = timestep - low
        log_sigma = (1 - frac) * log_sigmas[low] + frac * log_sigmas[low + 1]
        return 1 / (1 + (2 * log_sigma).exp())

    def forward(
        self,
        sample: Tensor,
        timestep: Tensor | float | int,
        encoder_hidden_states: Tensor,
        added_cond_kwargs: dict[str, Tensor] | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
        **kwargs,
    ) -> UNet2DConditionOutput | tuple[Tensor]:
        """`cross_attention_kwargs={"prompt_adherence": a}` (a float, or a (B,) tensor: one per row) sets the
        model's adherence for this call only; diffusers' pipeline passes that dict through unchanged, so a run
        chooses it without changing a model that other runs share. Without it, the config's default holds."""
        batch, _, height, width = sample.shape  # (B, 4, H/8, W/8)
        dtype = self.compute_dtype(sample.device)
        t = torch.as_tensor(timestep, device=sample.device).to(dtype).flatten()
        t = t.expand(batch) if t.numel() == 1 else t
        first, second = read_words(encoder_hidden_states, self.config.cross_attention_dim // 2)
        allowed = matching_items(first | second)  # (B, N)
        adherence = (cross_attention_kwargs or {}).get("prompt_adherence", self.config.prompt_adherence)
        prior = None if _is_one(adherence) else item_prior(allowed, check_adherence(adherence))
        eps = ideal_epsilon(sample.to(dtype).flatten(1), self.items(height, width, sample.device), allowed,
                            self.alpha_bar(t), self.width, prior)
        eps = eps.view_as(sample).to(sample.dtype)
        return UNet2DConditionOutput(sample=eps) if return_dict else (eps,)


# --- the VAE -------------------------------------------------------------------------------------------


def to_pixels(images: list[Image.Image]) -> Tensor:
    """PIL images of one size -> (B, 3, H, W) float32 in [-1, 1], exactly as the pipeline prepares a start image."""
    return VaeImageProcessor(vae_scale_factor=8).preprocess(images)


def colours_to_latents(rgb: Tensor) -> Tensor:
    """(B, 3, h, w) block colours in [-1, 1] -> UNet latents (B, 4, h, w), by the transpose of the colour map
    (its columns are orthonormal, so decoding these latents gives the colours back)."""
    factors = torch.tensor(LATENT_RGB_FACTORS, dtype=rgb.dtype, device=rgb.device)  # (4, 3)
    bias = torch.tensor(LATENT_RGB_BIAS, dtype=rgb.dtype, device=rgb.device)
    return torch.einsum("bchw,lc->blhw", rgb - bias[:, None, None], factors)


def pixels_to_latents(pixels: Tensor) -> Tensor:
    """(B, 3, H, W) in [-1, 1] -> UNet latents (B, 4, H/8, W/8): the mean colour of each 8x8 block, mapped."""
    return colours_to_latents(nn.functional.avg_pool2d(pixels, 8))


def images_to_latents(images: list[Image.Image]) -> Tensor:
    """PIL images of one size -> their UNet latents in float64, as `pixels_to_latents(to_pixels(images))` up to
    float32 rounding, and three times faster: each block's colour is an exact integer sum, normalised once."""
    pixels = torch.from_numpy(np.stack([np.asarray(image.convert("RGB")) for image in images]))  # (B, H, W, 3) uint8
    b, h, w, _ = pixels.shape
    sums = pixels.view(b, h // 8, 8, w // 8, 8, 3).sum(dim=(2, 4), dtype=torch.int32)  # (B, h, w, 3)
    return colours_to_latents((sums.double() / (64 * 127.5) - 1).permute(0, 3, 1, 2))


@functools.lru_cache(maxsize=32)
def _unblur_matrix(n: int) -> Tensor:
    """(n, n) float64: the inverse of what 8x bilinear upsampling then 8x8 block means do to one axis of a latent
    grid (1/8, 3/4, 1/8 inside, 7/8, 1/8 at the edges; diagonally dominant, so well conditioned)."""
    basis = torch.eye(n, dtype=torch.float64).view(n, 1, 1, n)
    up = nn.functional.interpolate(basis, scale_factor=8, mode="bilinear", align_corners=False)
    return torch.linalg.inv(nn.functional.avg_pool2d(up, 8).view(n, n).T)


def latents_to_pixels(latents: Tensor) -> Tensor:
    """UNet latents (B, 4, h, w) -> pixels (B, 3, 8h, 8w): a bilinear image whose 8x8 block means are exactly the
    latents' colours, so that encoding a decoded image gives its latents back (`pixels_to_latents` inverts it).

    Plain bilinear upsampling of the colours would blur each block into its neighbours, and the exact denoiser
    reads any such offset from a data item as noise: at the first DDIM inversion step it divides it by
    sqrt(1 - alpha_bar) (about 0.06), and the inverted noise then no longer maps back onto the image (issue 18).
    The price of exact block means under a smooth image: a faint ring outside sharp edges (up to 18 levels of 255
    from the grey beside a red circle), as any sharpening has.
    """
    h, w = latents.shape[-2:]
    dtype = ToyUNet.compute_dtype(latents.device)
    rows, cols = (_unblur_matrix(n).to(device=latents.device, dtype=dtype) for n in (h, w))
    sharp = torch.einsum("ij,bljw,kw->blik", rows, latents.to(dtype), cols).to(latents.dtype)
    factors = torch.tensor(LATENT_RGB_FACTORS, dtype=latents.dtype, device=latents.device)  # (4, 3)
    bias = torch.tensor(LATENT_RGB_BIAS, dtype=latents.dtype, device=latents.device)
    rgb = torch.einsum("blhw,lc->bchw", sharp, factors) + bias[:, None, None]
    return nn.functional.interpolate(rgb, scale_factor=8, mode="bilinear", align_corners=False)


class ToyVAE(ModelMixin, ConfigMixin):
    """A fixed linear autoencoder with SDXL's interface: latents are 8x8 blocks' colours in 4 channels.

    `block_out_channels` has four entries only because diffusers derives `vae_scale_factor` = 2 ** (len - 1) = 8
    from it. It is linear and exact in fp16, so it needs no upcast.
    """

    # The colour map, for a linear preview decoder: rgb = UNet latents @ factors + bias. The VAE's own latents
    # are UNet latents divided by `scaling_factor`, as for SDXL's VAE.
    latent_rgb_factors = LATENT_RGB_FACTORS
    latent_rgb_bias = LATENT_RGB_BIAS

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 4,
        block_out_channels: tuple[int, ...] = (1, 1, 1, 1),
        scaling_factor: float = 0.13025,
        force_upcast: bool = False,
        sample_size: int = DEFAULT_SIZE,
    ) -> None:
        super().__init__()
        # Parameters rather than buffers, so `.dtype`, `.device` and `.to()` behave as on any diffusers model.
        self.latent_rgb = nn.Parameter(torch.tensor(LATENT_RGB_FACTORS), requires_grad=False)  # (4, 3)
        self.rgb_bias = nn.Parameter(torch.tensor(LATENT_RGB_BIAS), requires_grad=False)

    def encode(self, x: Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        latents = pixels_to_latents(x.to(self.dtype)) / self.config.scaling_factor
        # A zero-width posterior: its sample() still draws from the generator, so img2img's random draws come in
        # the same order as with SDXL's VAE.
        dist = DiagonalGaussianDistribution(torch.cat([latents, torch.zeros_like(latents)], dim=1), deterministic=True)
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z: Tensor, return_dict: bool = True, **kwargs) -> DecoderOutput | tuple[Tensor]:
        images = latents_to_pixels(z.to(self.dtype) * self.config.scaling_factor)
        return DecoderOutput(sample=images) if return_dict else (images,)


class ToyPreviewDecoder(nn.Module):
    """The toy VAE behind TAESD's interface (UNet latents in, images out), for the "tiny" preview decoder."""

    def __init__(self, vae: ToyVAE) -> None:
        super().__init__()
        self.vae = vae

    def decode(self, latents: Tensor, return_dict: bool = False) -> tuple[Tensor]:
        return (self.vae.decode(latents / self.vae.config.scaling_factor).sample,)


# --- the pipeline --------------------------------------------------------------------------------------


def toy_pipeline(mixture_width: float = 0.0, prompt_adherence: float = DEFAULT_ADHERENCE) -> StableDiffusionXLPipeline:
    """The toy world as a `StableDiffusionXLPipeline`: exact denoiser, linear VAE, CLIP encoders that spell words.

    `prompt_adherence` a: how well the toy model learned its prompts. Its conditional is
    a p(x | c) + (1 - a) p(x) (`item_prior`), and the UNet is that model's exact denoiser. At 1 the model is
    the data's own conditional, and a perfect conditional model needs no guidance; at the default 0.5,
    "conditional only" follows the prompt on about half the seeds, and CFG is what brings the rest in, as with
    a real model. A run can set its own value (`GenerationRequest.prompt_adherence`); this is the default.
    `mixture_width` > 0 spreads each data item into a Gaussian of that width (UNet latent units), so samples
    need not be data items; it shows as pixel noise in every sample (0.5 does), hence 0 by default.
    """
    if not mixture_width >= 0:
        raise ValueError(f"mixture_width: must be 0 or more, got {mixture_width}")
    check_adherence(prompt_adherence)
    tokenizer = toy_tokenizer()
    vae = ToyVAE()
    pipe = StableDiffusionXLPipeline(
        vae=vae.eval(),
        text_encoder=toy_text_encoder(tokenizer, with_projection=False),
        text_encoder_2=toy_text_encoder(tokenizer, with_projection=True),
        tokenizer=tokenizer,
        tokenizer_2=toy_tokenizer(),
        unet=ToyUNet(mixture_width=mixture_width, prompt_adherence=prompt_adherence).eval(),
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.unet.items(DEFAULT_SIZE // 8, DEFAULT_SIZE // 8)  # draw and encode the data set at the default size now
    return pipe


def nearest_items(pipe: StableDiffusionXLPipeline, latents: Tensor) -> list[Item]:
    """The data item nearest (in UNet latent space) to each of (B, 4, h, w) latents: where each seed landed."""
    items = pipe.unet.items(*latents.shape[-2:], latents.device)
    distances = torch.cdist(latents.flatten(1).to(items), items)  # (B, N)
    return [ITEMS[n] for n in distances.argmin(dim=1).tolist()]


@dataclass(frozen=True, slots=True)
class Landing:
    """Where one seed's clean image landed: the nearest data item, how far from it, and whether that is on the data."""

    item: Item
    distance: float  # Euclidean, in UNet latent units
    bound: float  # the largest distance that still counts as that item (`on_data_bound`)

    @property
    def on_data(self) -> bool:
        return self.distance <= self.bound


def on_data_bound(pipe: StableDiffusionXLPipeline, height: int, width: int) -> float:
    """The distance within which a latent counts as a data item: half the smallest distance between two items.

    Within it a latent is nearer to its item than to any other (triangle inequality), so naming the item is
    unambiguous; and the exact denoiser's own samples land far inside it (Euler's last x0 is the posterior mean
    at the last noise level, one item to float64 precision). Beyond it the picture is no single item: a blend
    of several (too few steps to choose) or, with guidance s > 1, x0_u + s (x0_c - x0_u) extrapolated past the
    items, where shapes fuse and colours saturate. The smallest gap is between two small shapes at one place
    (1.68 at 256 px, so the bound is 0.84; items themselves have norms 5.8 to 16.1); it grows with the size.
    """
    items = pipe.unet.items(height, width)
    gaps = torch.cdist(items, items)
    gaps.fill_diagonal_(math.inf)
    return float(gaps.min()) / 2


def landings(pipe: StableDiffusionXLPipeline, latents: Tensor) -> list[Landing]:
    """For each of (B, 4, h, w) clean latents, the nearest data item and its distance (see `on_data_bound`).

    Pass the last step's x0 (`StepEvent.pred_x0`), not its latents: DDIM's last step keeps sqrt(1 - alpha_bar_0)
    of noise (SDXL's `set_alpha_to_one=False`), about 1.9 at 256 px, which is not what "on the data" asks.
    """
    items = pipe.unet.items(*latents.shape[-2:], latents.device)
    distances = torch.cdist(latents.flatten(1).to(items), items)  # (B, N)
    nearest, index = distances.min(dim=1)
    bound = on_data_bound(pipe, *latents.shape[-2:])
    return [Landing(ITEMS[n], float(d), bound) for n, d in zip(index.tolist(), nearest.tolist())]


def is_toy(pipe: StableDiffusionXLPipeline) -> bool:
    return isinstance(getattr(pipe, "unet", None), ToyUNet)

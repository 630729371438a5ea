"""The VAE both ways (image -> latents for img2img and inversion; the final full decode), and the
latent -> image decoders for per-step previews.

Every preview decoder has one signature, `decoder(latents) -> list[PIL.Image]`, with latents in the UNet's
space, (B, 4, H/f, W/f), and images at most `max_size` px on their longer side. Feed them
`StepEvent.pred_x0` (the clean-image estimate) or `StepEvent.latents` (the noisy state). `DECODER_TABLE` is
each decoder's one home (label, build): to add one, write its class and add an entry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from diffusers import AutoencoderKL, AutoencoderTiny, StableDiffusionXLPipeline
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img import retrieve_latents
from PIL import Image
from torch import Tensor

from .request import RequestError

logger = logging.getLogger(__name__)

PREVIEW_MAX_SIZE = 512
TAESDXL_REPO = "madebyollin/taesdxl"

# SDXL latent -> RGB projection, a least-squares fit of decoded colours against latent channels, taken from
# ComfyUI's comfy/latent_formats.py (class SDXL). ComfyUI applies it to latents in the UNet's (scaled) space,
# as we do, and reads the result in [-1, 1].
SDXL_LATENT_RGB_FACTORS = (
    # R        G        B
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
SDXL_LATENT_RGB_BIAS = (0.1084, -0.0175, -0.0011)


class PreviewDecoder(Protocol):
    def __call__(self, latents: Tensor) -> list[Image.Image]: ...


def to_pil(images: Tensor, max_size: int | None = None) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> PIL images, shrunk to fit `max_size` (aspect ratio kept)."""
    array = ((images.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    array = array.permute(0, 2, 3, 1).cpu().numpy()
    pils = [Image.fromarray(a) for a in array]
    if max_size is not None:
        for pil in pils:
            pil.thumbnail((max_size, max_size), Image.Resampling.BILINEAR)
    return pils


def prepare_vae(vae: AutoencoderKL) -> AutoencoderKL:
    """SDXL's VAE overflows in fp16 (its config sets `force_upcast`), so diffusers runs it in fp32. We upcast
    once and leave it there rather than toggling dtypes, which would race between concurrent runs."""
    if vae.dtype == torch.float16 and vae.config.force_upcast:
        vae.to(dtype=torch.float32)
    return vae


def _latents_stats(vae: AutoencoderKL, like: Tensor) -> tuple[Tensor, Tensor] | None:
    """The per-channel mean and std of the VAE's latents, (1, C, 1, 1), where its config gives them."""
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is None or std is None:
        return None
    return torch.tensor(mean).view(1, -1, 1, 1).to(like), torch.tensor(std).view(1, -1, 1, 1).to(like)


def to_unet_latents(vae: AutoencoderKL, latents: Tensor) -> Tensor:
    """VAE latents -> the UNet's space: (z - mean) * scaling_factor / std, or z * scaling_factor where the
    VAE gives no mean and std. The op order is diffusers', so our latents match its pipelines' exactly."""
    stats = _latents_stats(vae, latents)
    if stats is None:
        return latents * vae.config.scaling_factor
    mean, std = stats
    return (latents - mean) * vae.config.scaling_factor / std


def from_unet_latents(vae: AutoencoderKL, latents: Tensor) -> Tensor:
    """The inverse of `to_unet_latents`, for decoding."""
    stats = _latents_stats(vae, latents)
    if stats is None:
        return latents / vae.config.scaling_factor
    mean, std = stats
    return latents * std / vae.config.scaling_factor + mean


@torch.no_grad()
def encode_image(pipe: StableDiffusionXLPipeline, image: Image.Image, width: int, height: int,
                 generators: list[torch.Generator] | None = None) -> Tensor:
    """An image -> UNet latents, one per generator (each draws its own sample from the VAE's posterior, as
    diffusers' img2img does), or the posterior mean when no generator is given. (N, 4, H/f, W/f)."""
    vae = prepare_vae(pipe.vae)
    pixels = pipe.image_processor.preprocess(image, height=height, width=width)
    encoded = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype))
    if generators is None:
        latents = retrieve_latents(encoded, sample_mode="argmax")
    else:
        # One encoding serves every seed: the posterior is the same, only the samples differ.
        latents = torch.cat([retrieve_latents(encoded, generator=g) for g in generators])
    return to_unet_latents(vae, latents)


@torch.no_grad()
def vae_decode(vae: AutoencoderKL, latents: Tensor) -> Tensor:
    """UNet latents -> images in [-1, 1], exactly as `StableDiffusionXLPipeline.__call__` decodes them."""
    vae = prepare_vae(vae)
    latents = from_unet_latents(vae, latents.to(device=vae.device, dtype=vae.dtype))
    return vae.decode(latents, return_dict=False)[0]


def final_images(pipe: StableDiffusionXLPipeline, latents: Tensor) -> list[Image.Image]:
    """Full-size final images, through diffusers' own watermark and post-processing."""
    images = vae_decode(pipe.vae, latents)
    if getattr(pipe, "watermark", None) is not None:
        images = pipe.watermark.apply_watermark(images)
    return pipe.image_processor.postprocess(images, output_type="pil")


class VaePreview:
    """The full VAE: exact colours and detail, and the most expensive preview."""

    def __init__(self, vae: AutoencoderKL, max_size: int = PREVIEW_MAX_SIZE) -> None:
        self.vae, self.max_size = vae, max_size

    def __call__(self, latents: Tensor) -> list[Image.Image]:
        return to_pil(vae_decode(self.vae, latents), self.max_size)


class TinyPreview:
    """TAESD (Bohan Ollin Boer): a distilled decoder, about 11 times cheaper than SDXL's VAE on CPU.

    Its `scaling_factor` is 1.0 and it was trained on UNet-space latents, so they go in unscaled.
    """

    def __init__(self, taesd: AutoencoderTiny, max_size: int = PREVIEW_MAX_SIZE) -> None:
        self.taesd, self.max_size = taesd, max_size

    @torch.no_grad()
    def __call__(self, latents: Tensor) -> list[Image.Image]:
        param = next(self.taesd.parameters())
        images = self.taesd.decode(latents.to(device=param.device, dtype=param.dtype), return_dict=False)[0]
        return to_pil(images, self.max_size)


class LinearPreview:
    """A per-pixel linear map of the 4 latent channels to RGB: almost free, blurry (one pixel per latent)."""

    def __init__(
        self,
        factors: tuple[tuple[float, ...], ...] = SDXL_LATENT_RGB_FACTORS,
        bias: tuple[float, ...] = SDXL_LATENT_RGB_BIAS,
        max_size: int = PREVIEW_MAX_SIZE,
        scale_factor: int = 8,
    ) -> None:
        self.weight = torch.tensor(factors).T  # (3, 4), as torch.nn.functional.linear wants it
        self.bias = torch.tensor(bias)
        self.max_size, self.scale_factor = max_size, scale_factor

    @torch.no_grad()
    def __call__(self, latents: Tensor) -> list[Image.Image]:
        rgb = torch.nn.functional.linear(latents.float().movedim(1, -1), self.weight.to(latents.device), self.bias.to(latents.device))
        images = to_pil(rgb.movedim(-1, 1))
        # One pixel per latent: upscale to the size the VAE would give (capped), so every decoder shows the
        # same geometry.
        return [self._fit(img) for img in images]

    def _fit(self, image: Image.Image) -> Image.Image:
        scale = min(self.scale_factor, self.max_size / max(image.size))
        return image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)


def load_taesdxl(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> AutoencoderTiny:
    """The TAESD decoder for SDXL (`madebyollin/taesdxl`), from the local cache or the hub."""
    return AutoencoderTiny.from_pretrained(TAESDXL_REPO, dtype=dtype).to(device)


def _vae(pipe: StableDiffusionXLPipeline, taesd: AutoencoderTiny | None, max_size: int) -> PreviewDecoder:
    return VaePreview(pipe.vae, max_size)


def _tiny(pipe: StableDiffusionXLPipeline, taesd: AutoencoderTiny | None, max_size: int) -> PreviewDecoder:
    if taesd is None:
        raise RequestError("preview", "the tiny autoencoder is not loaded; pass `taesd` or pick 'vae' or 'linear'")
    return TinyPreview(taesd, max_size)


def _linear(pipe: StableDiffusionXLPipeline, taesd: AutoencoderTiny | None, max_size: int) -> PreviewDecoder:
    # A VAE that states its own latent -> RGB map (the toy world's, which is exact) overrides SDXL's fit.
    factors = getattr(pipe.vae, "latent_rgb_factors", SDXL_LATENT_RGB_FACTORS)
    bias = getattr(pipe.vae, "latent_rgb_bias", SDXL_LATENT_RGB_BIAS)
    return LinearPreview(factors, bias, max_size=max_size, scale_factor=pipe.vae_scale_factor)


@dataclass(frozen=True, slots=True)
class Decoder:
    """One preview decoder, everything about it in one place: the request's value, the page's label, its build."""

    name: str
    label: str  # the page's choice
    build: Callable[[StableDiffusionXLPipeline, AutoencoderTiny | None, int], PreviewDecoder]
    needs_taesd: bool = False  # it decodes with the tiny autoencoder, which the app may not have loaded


# In the order of PREVIEW_DECODERS (cost, highest first); the page lists them as it likes.
_DECODERS = (
    Decoder("vae", "Full VAE (exact, slow)", _vae),
    Decoder("tiny", "Tiny autoencoder (TAESD, fast)", _tiny, needs_taesd=True),
    Decoder("linear", "Linear approximation (free, blurry)", _linear),
)
DECODER_TABLE: dict[str, Decoder] = {decoder.name: decoder for decoder in _DECODERS}
PREVIEW_DECODERS: tuple[str, ...] = tuple(DECODER_TABLE)


def make_preview_decoder(
    name: str, pipe: StableDiffusionXLPipeline, taesd: AutoencoderTiny | None = None, max_size: int = PREVIEW_MAX_SIZE
) -> PreviewDecoder:
    """Build the decoder called `name` (an entry of `DECODER_TABLE`: "vae", "tiny" or "linear") for `pipe`."""
    if name not in DECODER_TABLE:
        raise RequestError("preview", f"must be one of {', '.join(PREVIEW_DECODERS)}, got {name!r}")
    return DECODER_TABLE[name].build(pipe, taesd, max_size)

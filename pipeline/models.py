"""Loading SDXL pipelines: real ones (hub id, local folder, single file) and a tiny random one, offline.

No machine of this project's CI reaches a model hub, so tests and demos run on `tiny_pipeline`: SDXL's
architecture (two CLIP text encoders, text-time micro-conditioning, VAE with scale factor 8) at toy size.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderTiny,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from huggingface_hub import constants as hf_constants
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
from tokenizers.pre_tokenizers import ByteLevel

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
TINY = "tiny"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# A real CLIP vocabulary has 49,408 entries. Offline, `CLIPTokenizer.from_pretrained(<hub id>)` can quietly
# return a 3-entry tokenizer that maps every prompt to the same ids; anything this small is not a tokenizer.
MIN_VOCAB = 256

# SDXL base's scheduler config (scheduler/scheduler_config.json in stabilityai/stable-diffusion-xl-base-1.0).
SDXL_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    steps_offset=1,
    timestep_spacing="leading",
    interpolation_type="linear",
    use_karras_sigmas=False,
    # Not read by Euler, but kept in the config so that DDIM built `from_config` behaves as on the real model:
    # no clipping of x0 to [-1, 1], and the last step's alpha is the schedule's, not 1.
    clip_sample=False,
    set_alpha_to_one=False,
    sample_max_value=1.0,
    skip_prk_steps=True,
)


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says what was tried and what to do.

    `summary` is the same without the underlying exception's text, short enough for a banner.
    """

    def __init__(self, message: str, summary: str | None = None) -> None:
        super().__init__(message)
        self.summary = summary or message


def tiny_tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP BPE tokenizer built in code: every byte is a token, with no merges."""
    chars = sorted(ByteLevel.alphabet())  # the 256 printable stand-ins GPT-2/CLIP byte-level BPE uses
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in chars + [c + "</w>" for c in chars]:
        vocab[token] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _text_config(tokenizer: CLIPTokenizer, projection_dim: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=3,
        max_position_embeddings=77,
        projection_dim=projection_dim,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act="gelu",
    )


def tiny_unet(cross_attention_dim: int = 64, projection_dim: int = 32, block_out_channels: tuple[int, ...] = (32, 64)) -> UNet2DConditionModel:
    """SDXL's UNet design (text-time added conditioning, linear-projection transformers) at toy size."""
    addition_time_embed_dim = 8
    return UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=block_out_channels,
        layers_per_block=1,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (len(block_out_channels) - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (len(block_out_channels) - 1) + ("UpBlock2D",),
        attention_head_dim=tuple(c // 16 for c in block_out_channels),
        transformer_layers_per_block=1,
        use_linear_projection=True,
        cross_attention_dim=cross_attention_dim,
        addition_embed_type="text_time",
        addition_time_embed_dim=addition_time_embed_dim,
        # 6 micro-conditioning numbers (original size, crop, target size), each embedded, plus the pooled text
        projection_class_embeddings_input_dim=6 * addition_time_embed_dim + projection_dim,
        norm_num_groups=8,
    )


def tiny_vae() -> AutoencoderKL:
    """A 4-level VAE, so `vae_scale_factor` is 8 as in SDXL, with SDXL's latent scaling factor."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=128,
        scaling_factor=0.13025,
        force_upcast=True,
    )


def tiny_taesd(seed: int = 0) -> AutoencoderTiny:
    """A random-weight tiny autoencoder with TAESD's architecture, standing in for `madebyollin/taesdxl`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderTiny(
            encoder_block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8),
            num_encoder_blocks=(1, 1, 1, 1),
            num_decoder_blocks=(1, 1, 1, 1),
            latent_channels=4,
        ).eval()


def tiny_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """A random-weight SDXL pipeline, built offline in well under a second. Images are noise, math is real."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = tiny_tokenizer()
        text_encoder = CLIPTextModel(_text_config(tokenizer, projection_dim=32))
        text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer, projection_dim=32))
        unet = tiny_unet(cross_attention_dim=32 + 32, projection_dim=32)
        vae = tiny_vae()
    pipe = StableDiffusionXLPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        text_encoder_2=text_encoder_2.eval(),
        tokenizer=tokenizer,
        tokenizer_2=tiny_tokenizer(),
        unet=unet.eval(),
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def resolve_device(device: str) -> str:
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """`auto` is fp16 on an accelerator and fp32 on CPU, where half precision is very slow or unsupported."""
    if dtype == "auto":
        return torch.float32 if device == "cpu" else torch.float16
    if dtype not in DTYPES:
        raise ValueError(f"dtype: must be auto or one of {', '.join(DTYPES)}, got {dtype!r}")
    if device == "cpu" and dtype != "float32":
        raise ValueError(f"dtype: {dtype} on cpu is unsupported or far too slow; use float32 (or auto)")
    return DTYPES[dtype]


def check_tokenizers(pipe: StableDiffusionXLPipeline) -> None:
    """Refuse a pipeline whose tokenizers cannot tell prompts apart (an empty offline stand-in)."""
    for name in ("tokenizer", "tokenizer_2"):
        tokenizer = getattr(pipe, name, None)
        if tokenizer is None:
            raise ModelLoadError(f"{name} is missing: this is not an SDXL pipeline with two text encoders")
        # Same word and character counts, so a tokenizer that maps every word or character to one unknown id
        # gives equal ids for both (prompts of different lengths would differ by length alone).
        different = tokenizer("a red cube").input_ids != tokenizer("a big bowl").input_ids
        if len(tokenizer) < MIN_VOCAB or not different:
            raise ModelLoadError(
                f"{name} cannot tell prompts apart ({len(tokenizer)} vocabulary entries; CLIP's has 49,408): its "
                "files are probably missing (offline, or an incomplete download). Download the model fully and try "
                "again."
            )


def _from_pretrained(model: str, dtype: torch.dtype) -> StableDiffusionXLPipeline:
    kwargs = {"dtype": dtype, "use_safetensors": True}
    if dtype == torch.float16 and not Path(model).is_dir():
        try:  # the hub's fp16 variant halves the download; not every repo has one
            return StableDiffusionXLPipeline.from_pretrained(model, variant="fp16", **kwargs)
        except (OSError, ValueError):
            pass
    return StableDiffusionXLPipeline.from_pretrained(model, **kwargs)


def _looks_like_path(model: str) -> bool:
    """A hub id is `name` or `owner/name`; anything else (a checkpoint suffix, `./x`, `/x/y`, `a/b/c`) is a path."""
    if model.endswith((".safetensors", ".ckpt")) or model.startswith((".", "/", "~")):
        return True
    return model.count("/") > 1 or (os.sep != "/" and os.sep in model)


def load_pipeline(
    model: str = DEFAULT_MODEL, device: str = "auto", dtype: str = "auto", seed: int = 0
) -> StableDiffusionXLPipeline:
    """Load an SDXL pipeline from a hub id, a local diffusers folder, a single `.safetensors` file, or `tiny`.

    Raises `ModelLoadError` with what was tried and how to fix it; never returns a half-loaded pipeline.
    """
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    if model == TINY:
        pipe = tiny_pipeline(seed)
    else:
        path = Path(model).expanduser()
        try:
            if path.is_file():
                if path.suffix not in (".safetensors", ".ckpt"):
                    raise ModelLoadError(f"model: {model} is a file but not a .safetensors or .ckpt checkpoint")
                pipe = StableDiffusionXLPipeline.from_single_file(str(path), dtype=torch_dtype)
            elif path.is_dir():
                pipe = _from_pretrained(str(path), torch_dtype)
            elif _looks_like_path(model):
                raise ModelLoadError(f"model: no such file or folder: {model}")
            else:
                pipe = _from_pretrained(model, torch_dtype)
        except ModelLoadError:
            raise
        except Exception as exc:  # diffusers raises OSError, ValueError, EnvironmentError, HTTP errors...
            # huggingface_hub reads HF_HUB_OFFLINE once, at import; its constant is what it actually obeys.
            offline = hf_constants.HF_HUB_OFFLINE
            hint = (
                "HF_HUB_OFFLINE is set and the model is not in the local cache"
                if offline
                else "check the name, your network, and (for gated models) `hf auth login`"
            )
            if path.is_file():
                hint = f"a single-file checkpoint needs its base model's config from the hub or the local cache; {hint}"
            summary = f"could not load model {model!r}: {hint}"
            raise ModelLoadError(f"{summary}. ({type(exc).__name__}: {exc})", summary) from exc
        check_tokenizers(pipe)
    pipe = pipe.to(device)  # already in torch_dtype: loaded that way, or the tiny model kept in fp32
    if torch_dtype == torch.float16 and pipe.vae.config.force_upcast:
        # SDXL's VAE overflows in fp16 (diffusers upcasts it for every decode); keep it in fp32 for good.
        pipe.vae.to(dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe

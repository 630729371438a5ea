"""Loading SDXL pipelines by name: a hub id, a local diffusers folder, a single checkpoint file, or one of the
offline stand-ins (`toy`, `tiny`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from diffusers import StableDiffusionXLPipeline
from huggingface_hub import constants as hf_constants

from ..defaults import DEFAULT_MODEL
from ..memory import MemoryChoice, apply_memory_mode, check_memory_mode, choose_memory_mode, free_memory, weight_bytes

from .tiny import tiny_pipeline
from .toy import toy_pipeline

logger = logging.getLogger(__name__)

TINY = "tiny"
TOY = "toy"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# A real CLIP vocabulary has 49,408 entries. Offline, `CLIPTokenizer.from_pretrained(<hub id>)` can quietly
# return a 3-entry tokenizer that maps every prompt to the same ids; anything this small is not a tokenizer.
MIN_VOCAB = 256


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says what was tried and what to do.

    `summary` is the same without the underlying exception's text, short enough for a banner.
    """

    def __init__(self, message: str, summary: str | None = None) -> None:
        super().__init__(message)
        self.summary = summary or message


def resolve_device(device: str) -> str:
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """`auto` is fp16 on an accelerator (CUDA, and MPS, whose bf16 needs macOS 14 and is slower) and fp32 on
    CPU, where half precision is very slow or unsupported."""
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


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a chain. diffusers' OSError ends "Please check out the root cause in the
    stacktrace above": a log line shows no stacktrace, so the cause itself is what to show (issue 18)."""
    while exc.__cause__ is not None or (exc.__context__ is not None and not exc.__suppress_context__):
        exc = exc.__cause__ or exc.__context__
    return exc


def load_pipeline(
    model: str = DEFAULT_MODEL, device: str = "auto", dtype: str = "auto", seed: int = 0, memory: str = "high"
) -> StableDiffusionXLPipeline:
    """Load an SDXL pipeline from a hub id, a local diffusers folder, a single `.safetensors` file, `toy` or `tiny`.

    `memory` is a mode of `pipeline.memory.MEMORY_MODES`; the one chosen, and why, is `memory_choice(pipe)`.
    Raises `ModelLoadError` with what was tried and how to fix it; never returns a half-loaded pipeline.
    """
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    check_memory_mode(memory)
    free = free_memory(device)  # before our weights take any of it
    if model == TINY:
        pipe = tiny_pipeline(seed)
    elif model == TOY:
        pipe = toy_pipeline()
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
            root = _root_cause(exc)
            raise ModelLoadError(f"{summary}. ({type(root).__name__}: {root})", summary) from exc
        check_tokenizers(pipe)
    if torch_dtype == torch.float16 and pipe.vae.config.force_upcast:
        # SDXL's VAE overflows in fp16 (diffusers upcasts it for every decode); keep it in fp32 for good.
        pipe.vae.to(dtype=torch.float32)
    weights, largest = weight_bytes(pipe, torch_dtype)
    choice = choose_memory_mode(memory, device, free, weights, largest)
    logger.info("Model %s on %s, %s", model, device, choice.describe())
    # already in torch_dtype: loaded that way, or a stand-in kept in fp32; the offload modes move it themselves
    apply_memory_mode(pipe, choice.mode, device)
    pipe.memory_choice = choice  # a plain attribute: diffusers registers only modules and config
    pipe.set_progress_bar_config(disable=True)
    return pipe


def memory_choice(pipe: StableDiffusionXLPipeline) -> MemoryChoice:
    """The memory mode `load_pipeline` put this pipeline in, and why (`high` for one built elsewhere)."""
    return getattr(pipe, "memory_choice", None) or MemoryChoice("high", "built outside load_pipeline")

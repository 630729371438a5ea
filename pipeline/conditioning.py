"""Prompt encodings for SDXL's two text encoders, and the baseline that guidance pushes away from.

`prompt` feeds text encoder 1 (CLIP ViT-L) and `prompt_2` feeds text encoder 2 (OpenCLIP bigG). The
encoding itself is diffusers' `encode_prompt`, so our embeddings are exactly the pipeline's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import StableDiffusionXLPipeline
from torch import Tensor

from .denoiser import execution_device
from .guidance import Part, Source
from .request import GenerationRequest


@dataclass(frozen=True, slots=True)
class PromptEmbeds:
    prompt_embeds: Tensor  # (1, 77, D1 + D2): both encoders' penultimate hidden states, concatenated
    pooled: Tensor  # (1, P): text encoder 2's projected pooled output

    def zeros(self) -> PromptEmbeds:
        """SDXL's default unconditional input (`force_zeros_for_empty_prompt`): all-zero embeddings."""
        return PromptEmbeds(torch.zeros_like(self.prompt_embeds), torch.zeros_like(self.pooled))

    def repeat(self, n: int) -> PromptEmbeds:
        return PromptEmbeds(self.prompt_embeds.repeat(n, 1, 1), self.pooled.repeat(n, 1))


@dataclass(frozen=True, slots=True)
class Truncation:
    """Text one encoder never saw, because CLIP reads at most `model_max_length` (77) tokens."""

    field: str  # "prompt", "prompt_2", ...
    encoder: str  # "text_encoder" or "text_encoder_2"
    dropped_tokens: int
    dropped_text: str


def encode(pipe: StableDiffusionXLPipeline, prompt: str, prompt_2: str = "") -> PromptEmbeds:
    """Encode one prompt pair; an empty `prompt_2` means the same text for both encoders (diffusers' rule)."""
    prompt_embeds, _, pooled, _ = pipe.encode_prompt(
        prompt=prompt,
        prompt_2=prompt_2 or None,
        device=execution_device(pipe),
        num_images_per_prompt=1,
        do_classifier_free_guidance=False,
    )
    return PromptEmbeds(prompt_embeds, pooled)


def encode_part(
    pipe: StableDiffusionXLPipeline, request: GenerationRequest, part: Part, cond: PromptEmbeds
) -> PromptEmbeds:
    """The embeddings one prediction is conditioned on, with batch 1; `cond` is the prompt's own encoding.

    The baseline is SDXL's zeros (shaped like `cond`) or the encoded empty prompt, as `request.uncond` says.
    """
    if part.source is Source.PROMPT:
        return cond
    if part.source is Source.NEGATIVE:
        return encode(pipe, request.negative_prompt, request.negative_prompt_2)
    if part.source is Source.WEIGHTED:
        return encode(pipe, request.weighted_prompts[part.index][0])
    return cond.zeros() if request.uncond == "zeros" else encode(pipe, "", "")


def truncations(pipe: StableDiffusionXLPipeline, **texts: str) -> list[Truncation]:
    """What each encoder drops of each text, e.g. `truncations(pipe, prompt=p, prompt_2=p2)`.

    A `*_2` field goes to tokenizer 2 and falls back to its first-encoder twin when empty, mirroring
    `encode_prompt`, so the report names exactly the text that was lost.
    """
    report = []
    for field, text in texts.items():
        second = field.endswith("_2")
        if second and not text:
            continue  # the first-encoder twin's text goes to encoder 2 too; reported under the twin
        encoders = [("text_encoder_2", pipe.tokenizer_2)] if second else [("text_encoder", pipe.tokenizer)]
        if not second and not texts.get(f"{field}_2"):
            encoders.append(("text_encoder_2", pipe.tokenizer_2))
        for encoder, tokenizer in encoders:
            # with begin and end tokens; offsets: where each token sits in `text` ((0, 0) for begin and end)
            encoded = tokenizer(text, truncation=False, verbose=False, return_offsets_mapping=True)
            limit = tokenizer.model_max_length
            if len(encoded.input_ids) > limit:
                # the last kept slot holds the end token. The dropped text is quoted from `text` itself: decoding
                # the dropped ids joins whole-word added tokens (the toy's words) with no spaces ("circlered").
                start = encoded.offset_mapping[limit - 1][0]
                report.append(Truncation(field, encoder, len(encoded.input_ids) - limit, text[start:]))
    return report

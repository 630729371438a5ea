"""The tiny random model: SDXL's architecture (two CLIP text encoders, text-time micro-conditioning, a VAE with
scale factor 8) at toy size, with random weights. Images are noise, but every tensor has SDXL's shape and every
code path of diffusers' pipeline runs, in milliseconds: the tests' model.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderTiny,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from .sdxl import SDXL_SCHEDULER_CONFIG


def tiny_tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP BPE tokenizer built in code: every byte is a token, with no merges."""
    chars = sorted(ByteLevel.alphabet())  # the 256 printable stand-ins GPT-2/CLIP byte-level BPE uses
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in chars + [c + "</w>" for c in chars]:
        vocab[token] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def text_config(tokenizer: CLIPTokenizer, projection_dim: int, hidden_size: int = 32, intermediate_size: int = 37,
                heads: int = 4, layers: int = 3) -> CLIPTextConfig:
    """A small CLIP text encoder's config over `tokenizer` (the tiny model's; the toy world's, with its sizes)."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_attention_heads=heads,
        num_hidden_layers=layers,
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
        text_encoder = CLIPTextModel(text_config(tokenizer, projection_dim=32))
        text_encoder_2 = CLIPTextModelWithProjection(text_config(tokenizer, projection_dim=32))
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

"""Model loading: the tiny offline pipeline, load_pipeline's three sources, and its error paths.

Nothing here may touch the network: conftest sets HF_HUB_OFFLINE=1, and the `no_network` fixture records
(and refuses) any socket connection, so a hidden download shows up as a failure, not as a slow test.
"""

from __future__ import annotations

import shutil
import socket
from types import SimpleNamespace

import huggingface_hub.constants
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
from safetensors.torch import save_file
from transformers import CLIPTokenizer

from pipeline import GenerationRequest, ModelLoadError, generate, load_pipeline, tiny_pipeline
from pipeline.models import MIN_VOCAB, check_tokenizers, resolve_dtype, tiny_tokenizer

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
# A pipeline reloaded from safetensors differs from the in-memory one by about 2e-6 (memory-mapping
# alignment changes which kernels run); two short denoising steps amplify that to about 1e-5.
WEIGHT_TOL = dict(rtol=0.0, atol=1e-5)
LATENT_TOL = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture
def no_network(monkeypatch):
    """Refuse every socket connection and record the attempt; also pin huggingface_hub's offline switch."""
    attempts: list[object] = []

    def refuse(self, address):
        attempts.append(address)
        raise OSError(f"test: network access to {address!r} is forbidden")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    yield attempts
    assert attempts == [], f"something tried to reach the network: {attempts}"


@pytest.fixture(scope="module")
def saved_folder(tiny_pipe, tmp_path_factory):
    """The session's tiny pipeline, saved as a diffusers folder. Tests that edit it work on a copy."""
    folder = tmp_path_factory.mktemp("tiny_sdxl")
    tiny_pipe.save_pretrained(folder)
    return folder


@pytest.fixture
def folder_copy(saved_folder, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(saved_folder, target)
    return target


def _state_dicts(pipe: StableDiffusionXLPipeline) -> dict[str, dict[str, torch.Tensor]]:
    return {name: getattr(pipe, name).state_dict() for name in COMPONENTS}


def _short_request() -> GenerationRequest:
    return GenerationRequest(prompt="a red cube", steps=2, seeds=(1, 2), width=64, height=64, guidance_scale=5.0)


# --- tiny_pipeline ---------------------------------------------------------------------------------------------


def test_tiny_pipeline_builds_offline_with_sdxl_shape(no_network):
    pipe = tiny_pipeline(seed=0)
    assert isinstance(pipe, StableDiffusionXLPipeline)
    assert pipe.vae_scale_factor == 8
    assert pipe.unet.config.in_channels == 4
    assert pipe.unet.config.addition_embed_type == "text_time"  # SDXL's micro-conditioning
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler)
    for name in ("tokenizer", "tokenizer_2"):
        tokenizer = getattr(pipe, name)
        assert isinstance(tokenizer, CLIPTokenizer)
        assert tokenizer.model_max_length == 77
        assert len(tokenizer) >= MIN_VOCAB
        assert tokenizer("a red cube").input_ids != tokenizer("a big bowl").input_ids
    check_tokenizers(pipe)


def test_tiny_pipeline_same_seed_gives_identical_weights():
    first, second = _state_dicts(tiny_pipeline(seed=5)), _state_dicts(tiny_pipeline(seed=5))
    for name in COMPONENTS:
        assert first[name].keys() == second[name].keys()
        for key, value in first[name].items():
            assert torch.equal(value, second[name][key]), f"{name}.{key} differs between two seed-5 builds"


def test_tiny_pipeline_different_seeds_give_different_weights():
    first, second = _state_dicts(tiny_pipeline(seed=0)), _state_dicts(tiny_pipeline(seed=1))
    for name in COMPONENTS:
        # Norm layers start at ones and zeros whatever the seed, so ask only that some tensor differs.
        changed = [key for key, value in first[name].items() if not torch.equal(value, second[name][key])]
        assert changed, f"{name} has the same weights for seeds 0 and 1"


def test_tiny_pipeline_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_pipeline(seed=7)
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)


def test_tiny_tokenizer_is_byte_level():
    tokenizer = tiny_tokenizer()
    ids = tokenizer("héllo wörld ✓").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.unk_token_id not in ids[1:-1]  # every byte has a token, even outside ASCII
    assert tokenizer.decode(ids, skip_special_tokens=True).strip() == "héllo wörld ✓"


# --- load_pipeline: sources that work ---------------------------------------------------------------------------


def test_load_pipeline_tiny_matches_tiny_pipeline():
    loaded = load_pipeline("tiny", device="cpu", dtype="float32", seed=3)
    expected = _state_dicts(tiny_pipeline(seed=3))
    for name, state in _state_dicts(loaded).items():
        for key, value in state.items():
            assert torch.equal(value, expected[name][key]), f"{name}.{key}"


def test_load_pipeline_local_folder_round_trip(tiny_pipe, saved_folder, no_network):
    loaded = load_pipeline(str(saved_folder), device="cpu", dtype="float32")

    assert isinstance(loaded, StableDiffusionXLPipeline)
    assert loaded.vae_scale_factor == 8
    assert type(loaded.scheduler) is type(tiny_pipe.scheduler)
    assert loaded.scheduler.config.timestep_spacing == tiny_pipe.scheduler.config.timestep_spacing
    for name in ("tokenizer", "tokenizer_2"):
        prompt = "a watercolor painting of an otter"
        assert getattr(loaded, name)(prompt).input_ids == getattr(tiny_pipe, name)(prompt).input_ids
    original = _state_dicts(tiny_pipe)
    for name, state in _state_dicts(loaded).items():
        assert state.keys() == original[name].keys(), name
        for key, value in state.items():
            assert value.dtype == torch.float32, f"{name}.{key}"
            torch.testing.assert_close(value, original[name][key], **WEIGHT_TOL, msg=f"{name}.{key}")

    expected = list(generate(tiny_pipe, _short_request()))[-1]
    got = list(generate(loaded, _short_request()))[-1]
    torch.testing.assert_close(got.latents, expected.latents, **LATENT_TOL)
    assert len(got.images) == 2


# --- load_pipeline: sources that must fail with ModelLoadError -------------------------------------------------


def test_empty_tokenizer_in_folder_is_refused(folder_copy, no_network):
    # What `CLIPTokenizer.from_pretrained(<hub id>)` can return offline: a tokenizer with a 2-3 entry vocabulary.
    shutil.rmtree(folder_copy / "tokenizer_2")
    CLIPTokenizer().save_pretrained(folder_copy / "tokenizer_2")
    with pytest.raises(ModelLoadError, match=r"tokenizer_2 cannot tell prompts apart"):
        load_pipeline(str(folder_copy), device="cpu", dtype="float32")


def test_tokenizer_with_missing_vocab_file_is_refused(folder_copy, no_network):
    (folder_copy / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match=r"^tokenizer cannot tell prompts apart"):
        load_pipeline(str(folder_copy), device="cpu", dtype="float32")


def test_check_tokenizers_accepts_real_ones(tiny_pipe):
    check_tokenizers(tiny_pipe)  # raises on failure


def test_check_tokenizers_refuses_empty_tokenizer():
    pipe = SimpleNamespace(tokenizer=tiny_tokenizer(), tokenizer_2=CLIPTokenizer())
    with pytest.raises(ModelLoadError, match=r"tokenizer_2 .*vocabulary entries"):
        check_tokenizers(pipe)


def test_check_tokenizers_refuses_large_vocab_that_maps_everything_to_unknown():
    # Enough entries to pass the size check, but none of them a byte or a word: every prompt encodes to the
    # unknown id, so only prompts of different lengths would differ.
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1} | {f"zz{i}</w>": i + 2 for i in range(MIN_VOCAB + 10)}
    blind = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    assert len(blind) >= MIN_VOCAB
    with pytest.raises(ModelLoadError, match=r"^tokenizer cannot tell prompts apart"):
        check_tokenizers(SimpleNamespace(tokenizer=blind, tokenizer_2=tiny_tokenizer()))


def test_check_tokenizers_refuses_missing_tokenizer():
    with pytest.raises(ModelLoadError, match=r"tokenizer_2 is missing"):
        check_tokenizers(SimpleNamespace(tokenizer=tiny_tokenizer(), tokenizer_2=None))


def test_hub_id_offline_and_not_cached(no_network):
    assert huggingface_hub.constants.HF_HUB_OFFLINE
    with pytest.raises(ModelLoadError) as info:
        load_pipeline("nobody/not-a-model", device="cpu", dtype="float32")
    message = str(info.value)
    assert "nobody/not-a-model" in message
    assert "HF_HUB_OFFLINE" in message and "local cache" in message
    # the reason itself, not diffusers' pointer to a stacktrace the log never shows (issue 18)
    assert "stacktrace" not in message and "offline mode is enabled" in message, message


@pytest.mark.parametrize(
    "name", ["missing-folder/sub/dir", "./missing-folder", "missing.safetensors", "missing.ckpt"]
)
def test_nonexistent_relative_path(name, tmp_path, monkeypatch, no_network):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match=r"no such file or folder"):
        load_pipeline(name, device="cpu", dtype="float32")


@pytest.mark.parametrize("name", ["missing", "a/b", "weights.safetensors"])
def test_nonexistent_absolute_path(name, tmp_path, no_network):
    with pytest.raises(ModelLoadError, match=r"no such file or folder"):
        load_pipeline(str(tmp_path / name), device="cpu", dtype="float32")


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".json"])
def test_file_with_wrong_suffix(suffix, tmp_path, no_network):
    path = tmp_path / f"weights{suffix}"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match=r"not a \.safetensors or \.ckpt"):
        load_pipeline(str(path), device="cpu", dtype="float32")


def test_single_file_offline_needs_config_from_hub(tmp_path, no_network):
    # diffusers' from_single_file fetches the base model's config from the hub; offline and uncached, it can't.
    path = tmp_path / "sdxl.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}, str(path))
    with pytest.raises(ModelLoadError) as info:
        load_pipeline(str(path), device="cpu", dtype="float32")
    message = str(info.value)
    assert "single-file" in message
    assert "HF_HUB_OFFLINE" in message and "cache" in message


# --- resolve_dtype -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "device", "expected"),
    [
        ("auto", "cpu", torch.float32),
        ("auto", "cuda", torch.float16),
        ("float32", "cpu", torch.float32),
        ("float16", "cuda", torch.float16),
        ("bfloat16", "cuda", torch.bfloat16),
    ],
)
def test_resolve_dtype(dtype, device, expected):
    assert resolve_dtype(dtype, device) is expected


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_resolve_dtype_refuses_half_precision_on_cpu(dtype):
    with pytest.raises(ValueError, match=rf"^dtype: {dtype} on cpu"):
        resolve_dtype(dtype, "cpu")


def test_resolve_dtype_refuses_unknown_name():
    with pytest.raises(ValueError, match=r"^dtype: must be auto or one of float32, float16, bfloat16, got 'fp64'"):
        resolve_dtype("fp64", "cuda")


def test_load_pipeline_checks_dtype_before_loading(no_network):
    with pytest.raises(ValueError, match=r"^dtype"):
        load_pipeline("nobody/not-a-model", device="cpu", dtype="float16")


def test_tiny_scheduler_config_gives_ddim_sdxls_settings(tiny_pipe):
    from pipeline.schedulers import make_scheduler

    ddim = make_scheduler(tiny_pipe, "ddim")
    # SDXL base's scheduler_config.json: no x0 clipping, final alpha from the schedule
    assert ddim.config.clip_sample is False and ddim.config.set_alpha_to_one is False
    assert ddim.config.timestep_spacing == "leading" and ddim.config.steps_offset == 1

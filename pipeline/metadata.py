"""PNG text chunks for final images: the settings that made an image travel with it.

Two chunks are written:
- `parameters`: the text AUTOMATIC1111's web UI writes (`create_infotext` in its modules/processing.py), so
  A1111, ComfyUI loaders and image browsers show our settings. Our own fields ride along as extra
  `Key: value` pairs, the way A1111 extensions add theirs.
- `cfg_explorer`: JSON holding the exact request, the image's seed and the model, which is what we read back.

Reading rebuilds the request through `GenerationRequest.from_dict`, so a tampered or outdated file meets the
same validation as a UI value and the error names the field. A PNG that carries only A1111's `parameters`
(say, one made by A1111 itself) is read from that text instead.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .guidance import GUIDANCE_MODES, Param
from .request import MAX_INIT_IMAGE_SIDE, SCHEDULERS, GenerationRequest, RequestError
from .schedulers import SCHEDULER_TABLE

PARAMETERS_KEY = "parameters"  # the chunk A1111 writes and reads
SETTINGS_KEY = "cfg_explorer"
METADATA_VERSION = 1

# A1111's sampler labels (modules/sd_samplers_*.py) for the schedulers these builds of diffusers' ones match.
SAMPLER_NAMES: dict[str, str] = {entry.name: entry.a1111 for entry in SCHEDULER_TABLE.values()}
# Our schedulers are built from the model's own scheduler config, which is what A1111 calls "Automatic":
# the sampler's default schedule for the loaded model.
SCHEDULE_TYPE = "Automatic"

# Uploaded PNGs are hostile input, and their text is parsed on the server: bound it before any parsing.
# A1111's own settings text is a few hundred characters; its longest prompts are a few thousand.
MAX_PARAMETERS_CHARS = 32_000
MAX_SETTINGS_CHARS = 64_000
MAX_JSON_DEPTH = 8  # our settings JSON nests 3 deep ({"request": {"seeds": [...]}})
# A1111's keys (modules/infotext_utils.py): a word character, then word characters, spaces, '-' or '/'.
_KEY_RE = re.compile(r"\w[\w \-/]+")
_SIZE_RE = re.compile(r"^(\d+)x(\d+)$")
_NEGATIVE_PREFIX = "Negative prompt:"

Source = str | os.PathLike[str] | Image.Image


def _quote(value: Any) -> str:
    """A1111's `quote`: JSON-quote a value that holds a comma, newline or colon, so the line still parses."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def _unquote(text: str) -> str:
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _settings_pairs(line: str) -> list[tuple[str, str]]:
    """The `Key: value` pairs of A1111's settings line, in one left-to-right pass.

    Reads what A1111's regex (`re_param` in modules/infotext_utils.py) reads: a value is a JSON-quoted
    string or runs to the next comma. That regex backtracks quadratically on text with no colon in it (48 kB
    of "a a a ..." held the interpreter for 8.6 s), so this scans instead: each character is visited a
    bounded number of times, whatever the text.
    """
    pairs: list[tuple[str, str]] = []
    i, n = 0, len(line)
    while i < n:
        colon = line.find(":", i)
        if colon < 0:
            break
        # A key starts after the last comma before its colon: "junk, Steps: 20" still yields Steps.
        key = line[i:colon].rsplit(",", 1)[-1].strip()
        j = colon + 1
        while j < n and line[j].isspace():
            j += 1
        if j < n and line[j] == '"':
            k = j + 1
            while k < n and line[k] != '"':
                k += 2 if line[k] == "\\" else 1
            end = min(k + 1, n)
            comma = line.find(",", end)
            value = line[j:end] if line[end:comma if comma >= 0 else n].strip() == "" else line[j:comma if comma >= 0 else n]
        else:
            comma = line.find(",", j)
            value = line[j:comma if comma >= 0 else n]
        if _KEY_RE.fullmatch(key):
            pairs.append((key, value.strip()))
        i = n if comma < 0 else comma + 1
    return pairs


def _json_depth(text: str) -> int:
    """How deeply `text`'s JSON nests, counted without parsing (brackets inside strings do not count)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _check_seed(request: GenerationRequest, seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed not in request.seeds:
        raise RequestError("seed", f"must be one of the request's seeds {list(request.seeds)}, got {seed!r}")


def a1111_key(param: Param) -> str:
    """The `parameters` key of a mode's own setting: its page label, less any note in brackets ("FDG scales"),
    since A1111's keys hold only word characters, spaces, '-' and '/'."""
    return re.sub(r"\s*\(.*\)$", "", param.label)


def _param_text(value: float | tuple[float, ...]) -> str | float:
    """A mode setting as A1111 writes numbers; several (FDG's scale per level) separated by commas, quoted."""
    return ", ".join(repr(float(v)) for v in value) if isinstance(value, tuple) else value


def _param_value(params: dict[str, str], param: Param) -> Any:
    key = a1111_key(param)
    if not param.length:
        return _a1111_number(params, key, param.name, int if param.integer else float)
    try:
        return [float(v) for v in params[key].split(",")]
    except ValueError:
        raise RequestError(param.name, f"A1111 {key!r} must be numbers separated by commas, got "
                                       f"{params[key][:60]!r}") from None


def parameters_text(request: GenerationRequest, seed: int, model: str = "") -> str:
    """The `parameters` text for the image made with `seed`, in the layout A1111 writes and parses.

    Prompt line(s), then `Negative prompt: ...` when the mode reads one, then one settings line. Keys follow
    A1111's order; ours come after them, and only where they carry information (`Eta DDIM` only for DDIM): the
    guidance mode, then its own settings from its table entry (`MAMBO-G alpha: 8.0`), then the rest.
    """
    _check_seed(request, seed)
    params: dict[str, Any] = {
        "Steps": request.steps,
        "Sampler": SAMPLER_NAMES.get(request.scheduler, request.scheduler),
        "Schedule type": SCHEDULE_TYPE,
        "CFG scale": request.guidance_scale,
        "Seed": seed,
        "Size": f"{request.width}x{request.height}",
        "Model": model or None,
        "Guidance mode": request.mode,
        **{a1111_key(param): _param_text(getattr(request, param.name)) for param in GUIDANCE_MODES[request.mode].params},
        "Uncond": request.uncond,
        # A1111's key for DDIM's eta; its plain "Eta" means the ancestral samplers' noise, which is another knob.
        "Eta DDIM": request.eta if request.scheduler == "ddim" else None,
        "Prompt 2": request.prompt_2 or None,
    }
    negative = ""
    if "negative_prompt" in GUIDANCE_MODES[request.mode].reads and request.negative_prompt:
        negative = f"\n{_NEGATIVE_PREFIX} {request.negative_prompt}"
        params["Negative prompt 2"] = request.negative_prompt_2 or None
    line = ", ".join(f"{key}: {_quote(value)}" for key, value in params.items() if value is not None)
    return f"{request.prompt}{negative}\n{line}".strip()


def settings_json(request: GenerationRequest, seed: int, model: str = "") -> str:
    """The `cfg_explorer` chunk: everything needed to run this image again, exactly."""
    _check_seed(request, seed)
    return json.dumps(
        {"version": METADATA_VERSION, "request": request.to_dict(), "seed": seed, "model": model},
        sort_keys=True,
    )


def png_info(request: GenerationRequest, seed: int, model: str = "") -> PngInfo:
    """Both text chunks, ready for `Image.save(..., pnginfo=...)` (non-Latin-1 text is stored as iTXt)."""
    info = PngInfo()
    info.add_text(PARAMETERS_KEY, parameters_text(request, seed, model))
    info.add_text(SETTINGS_KEY, settings_json(request, seed, model))
    return info


def save_png(image: Image.Image, path: str | os.PathLike[str], request: GenerationRequest, seed: int,
             model: str = "") -> Path:
    """Save `image` as a PNG at `path` with its settings in text chunks; returns the path."""
    path = Path(path)
    image.save(path, format="PNG", pnginfo=png_info(request, seed, model))
    return path


def _text_chunks(source: Source) -> dict[str, str]:
    if isinstance(source, Image.Image):
        return _chunks_of(source)
    try:
        with Image.open(source) as image:
            return _chunks_of(image)
    except (OSError, EOFError, SyntaxError, Image.DecompressionBombError) as error:  # not an image, or damaged
        raise ValueError(f"{Path(source).name} is not an image this app can read ({type(error).__name__}), so it "
                         "carries no CFG Explorer settings") from error


def _chunks_of(image: Image.Image) -> dict[str, str]:
    chunks = {k: v for k, v in image.info.items() if isinstance(v, str)}
    # Chunks after the image data only show up in `.text`, which decodes the whole image to reach them. We
    # write ours before the image data; for a file too large to be ours, the header's chunks are all we read
    # (a 17 kB PNG can claim 12000x12000 pixels: 0.7 GB to decode).
    if max(image.size) <= MAX_INIT_IMAGE_SIDE and getattr(image, "n_frames", 1) == 1:
        chunks.update(getattr(image, "text", None) or {})
    return chunks


def _from_settings_json(text: str) -> tuple[GenerationRequest, int]:
    if len(text) > MAX_SETTINGS_CHARS:
        raise ValueError(f"the {SETTINGS_KEY!r} text chunk is {len(text):,} characters long; at most "
                         f"{MAX_SETTINGS_CHARS:,} are read, so these are not CFG Explorer settings")
    if _json_depth(text) > MAX_JSON_DEPTH:  # json.loads would recurse once per level, up to a RecursionError
        raise ValueError(f"the {SETTINGS_KEY!r} text chunk nests deeper than {MAX_JSON_DEPTH} levels, so these "
                         f"are not CFG Explorer settings")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"the {SETTINGS_KEY!r} text chunk is not valid JSON ({error}); the PNG's settings are damaged"
        ) from error
    if not isinstance(data, dict):
        raise ValueError(f"the {SETTINGS_KEY!r} text chunk must hold a JSON object, got {type(data).__name__}")
    if data.get("version") != METADATA_VERSION:
        raise ValueError(f"the {SETTINGS_KEY!r} text chunk has version {data.get('version')!r}; this build reads "
                         f"version {METADATA_VERSION}")
    if not isinstance(data.get("request"), dict):
        raise ValueError(f"the {SETTINGS_KEY!r} text chunk has no 'request' object")
    request = GenerationRequest.from_dict(data["request"])
    seed = data.get("seed")
    _check_seed(request, seed)
    return request, seed


def _a1111_number(params: dict[str, str], key: str, field: str, kind: type) -> Any:
    try:
        return kind(params[key])
    except ValueError:
        raise RequestError(field, f"A1111 {key!r} must be a number, got {params[key]!r}") from None


def _from_parameters(text: str) -> tuple[GenerationRequest, int]:
    """Rebuild a one-seed request from A1111's `parameters` text, as its `parse_generation_parameters` does.

    Keys with no counterpart here (Model hash, hires fix, Schedule type...) are ignored: an image made
    elsewhere never reproduces exactly anyway, since its starting noise came from another random generator.
    """
    if len(text) > MAX_PARAMETERS_CHARS:
        raise ValueError(f"the {PARAMETERS_KEY!r} text chunk is {len(text):,} characters long; at most "
                         f"{MAX_PARAMETERS_CHARS:,} are read")
    *lines, last = text.strip().split("\n")
    pairs = _settings_pairs(last)
    if len(pairs) < 3:  # A1111's own test for "the last line holds the settings"
        raise ValueError(f"the {PARAMETERS_KEY!r} text chunk has no settings line (Steps, Sampler, Seed...)")
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    for line in lines:
        line = line.strip()
        if line.startswith(_NEGATIVE_PREFIX) and not negative_lines:
            negative_lines.append(line[len(_NEGATIVE_PREFIX):].strip())
        elif negative_lines:
            negative_lines.append(line)
        else:
            prompt_lines.append(line)
    params = {key: _unquote(value) for key, value in pairs}
    if "Seed" not in params:
        raise ValueError(f"the {PARAMETERS_KEY!r} text chunk names no Seed")

    data: dict[str, Any] = {"prompt": "\n".join(prompt_lines), "negative_prompt": "\n".join(negative_lines)}
    data["mode"] = params.get("Guidance mode", "negative_direction" if data["negative_prompt"] else "cfg")
    seed = _a1111_number(params, "Seed", "seeds", int)
    data["seeds"] = (seed,)
    if "Steps" in params:
        data["steps"] = _a1111_number(params, "Steps", "steps", int)
    if "CFG scale" in params:
        data["guidance_scale"] = _a1111_number(params, "CFG scale", "guidance_scale", float)
    if "Eta DDIM" in params:
        data["eta"] = _a1111_number(params, "Eta DDIM", "eta", float)
    if "Size" in params:
        size = _SIZE_RE.match(params["Size"])
        if size is None:
            raise RequestError("width", f"A1111 'Size' must read WIDTHxHEIGHT, got {params['Size']!r}")
        data["width"], data["height"] = int(size[1]), int(size[2])
    if "Sampler" in params:
        by_label = {label: name for name, label in SAMPLER_NAMES.items()} | {name: name for name in SCHEDULERS}
        if params["Sampler"] not in by_label:
            raise RequestError("scheduler", f"A1111 sampler {params['Sampler']!r} has no counterpart here; "
                                            f"supported: {', '.join(SAMPLER_NAMES.values())}")
        data["scheduler"] = by_label[params["Sampler"]]
    mode = GUIDANCE_MODES.get(data["mode"])
    for param in mode.params if mode else ():  # an unknown mode: from_dict names it
        if a1111_key(param) in params:
            data[param.name] = _param_value(params, param)
    for key, field in (("Uncond", "uncond"), ("Prompt 2", "prompt_2"), ("Negative prompt 2", "negative_prompt_2")):
        if key in params:
            data[field] = params[key]
    return GenerationRequest.from_dict(data), seed


def read_settings(source: Source) -> tuple[GenerationRequest, int]:
    """The request and seed stored in a PNG (a path or an open PIL image).

    Reads the `cfg_explorer` chunk; failing that, A1111's `parameters` text. Raises `ValueError` when the
    image carries neither, and `RequestError` (naming the field) when a stored value is out of range.
    """
    chunks = _text_chunks(source)
    if SETTINGS_KEY in chunks:
        return _from_settings_json(chunks[SETTINGS_KEY])
    if PARAMETERS_KEY in chunks:
        return _from_parameters(chunks[PARAMETERS_KEY])
    raise ValueError(f"this image carries no CFG Explorer settings: it has no {SETTINGS_KEY!r} or "
                     f"{PARAMETERS_KEY!r} PNG text chunk (image sites and chat apps often strip them)")

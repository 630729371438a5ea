"""Presets: ready-made experiments, one TOML file each in `presets/`, validated on load.

A preset file reads:

    name = "Standard CFG"
    description = "One or two sentences telling a learner what to look at."
    preview = "tiny"            # optional: "vae", "tiny" or "linear"

    [request]                   # GenerationRequest fields; missing ones take its defaults
    prompt = "a watercolor painting of an otter"
    guidance_scale = 7.5
    seeds = [1, 2]

    [toy]                       # optional: the same experiment in the toy world (its words, its size)
    name = "..."                # optional: the name there, if the name speaks SDXL's words
    description = "..."         # optional: what to look at there, if it differs
    prompt = "red circle"       # GenerationRequest fields that replace [request]'s when the toy is loaded
    width = 256
    height = 256

An unknown key, a wrong type or an out-of-range value is an error naming the file and the field, never a
silent fix: a typo such as `guidance_sclae` would otherwise run the default and teach the wrong lesson.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (Hugging Face ZeroGPU Spaces run 3.10.13): tomli is the same parser, published separately
    import tomli as tomllib

from .previews import PREVIEW_DECODERS
from .request import GenerationRequest, RequestError

# In a clone (and an editable install) the repository's presets/; an installed wheel carries the same files as
# pipeline/preset_files (pyproject.toml maps the folder there).
_HERE = Path(__file__).resolve().parent
PRESETS_DIR = _HERE / "preset_files" if (_HERE / "preset_files").is_dir() else _HERE.parent / "presets"
PRESET_KEYS: tuple[str, ...] = ("name", "description", "preview", "request", "toy")
REQUIRED_KEYS: tuple[str, ...] = ("name", "description", "request")
# GenerationRequest fields without a default; from_dict would fail on them with a bare TypeError.
REQUIRED_REQUEST_FIELDS: tuple[str, ...] = tuple(
    f.name for f in fields(GenerationRequest) if f.default is MISSING and f.default_factory is MISSING
)

_TOML_POSITION = re.compile(r"\(at line (\d+), column \d+\)")


class PresetError(ValueError):
    """A preset file is malformed. `path` and `field` (e.g. "request.steps"; None when unknown) locate it."""

    def __init__(self, path: str | os.PathLike[str], field: str | None, message: str) -> None:
        where = f"{os.fspath(path)}: {field}" if field else os.fspath(path)
        super().__init__(f"{where}: {message}")
        self.path = Path(path)
        self.field = field


@dataclass(frozen=True, slots=True)
class Preset:
    name: str
    description: str  # for the learner: what to look at
    request: GenerationRequest
    preview: str | None  # preview decoder to select, or None to keep the user's choice
    path: Path
    toy_request: GenerationRequest | None = None  # the experiment in the toy world's words and size
    toy_description: str | None = None  # what to look at there, when it differs from `description`
    sets_size: bool = False  # the file's [request] gives width or height: the size is part of the lesson
    toy_name: str | None = None  # the name in the toy world, when `name` speaks SDXL's words

    def title(self, toy: bool) -> str:
        """The name the page lists: the toy world's own where the toy is loaded and the preset has one."""
        return (self.toy_name or self.name) if toy else self.name

    def for_model(self, toy: bool) -> tuple[GenerationRequest, str]:
        """The request and description to use: the toy world's when the toy is loaded and the preset has them."""
        if toy and self.toy_request is not None:
            return self.toy_request, self.toy_description or self.description
        return self.request, self.description


def _parse_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise PresetError(path, None, f"is not UTF-8 text ({error})") from None
    except tomllib.TOMLDecodeError as error:
        message = f"malformed TOML: {error}"
        position = _TOML_POSITION.search(str(error))
        if position:
            lines = raw.decode("utf-8").splitlines()
            line_no = int(position[1])
            if 1 <= line_no <= len(lines):
                message += f"; the line reads {lines[line_no - 1].strip()!r}"
        raise PresetError(path, None, message) from None


def check_keys(path: Path, table: dict[str, Any], allowed: Sequence[str], required: Sequence[str], what: str,
               prefix: str = "") -> None:
    """Refuse a key the table may not have (not silently dropped) and a missing required one, naming the file
    and the key (`prefix` names the table a key sits in, as "lab.")."""
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise PresetError(path, f"{prefix}{unknown[0]}", f"unknown key; {what} has {', '.join(allowed)}")
    for key in required:
        if key not in table:
            raise PresetError(path, f"{prefix}{key}", "is required")


def _check_text(path: Path, data: dict[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str) or not value.strip():
        raise PresetError(path, key, f"must be non-empty text, got {value!r}")
    return value


def load_preset(path: str | os.PathLike[str]) -> Preset:
    """Read and validate one preset file; raises `PresetError` naming the file and the field."""
    path = Path(path)
    data = _parse_toml(path)
    check_keys(path, data, PRESET_KEYS, REQUIRED_KEYS, "a preset")
    name = _check_text(path, data, "name")
    description = _check_text(path, data, "description")
    preview = data.get("preview")
    if preview is not None and preview not in PREVIEW_DECODERS:
        raise PresetError(path, "preview", f"must be one of {', '.join(PREVIEW_DECODERS)}; got {preview!r}")
    table = data["request"]
    if not isinstance(table, dict):
        raise PresetError(path, "request", "must be a table ([request]) of GenerationRequest fields")
    for field in REQUIRED_REQUEST_FIELDS:
        if field not in table:
            raise PresetError(path, f"request.{field}", "is required")
    try:
        request = GenerationRequest.from_dict(table)
    except RequestError as error:
        raise PresetError(path, f"request.{error.field}", error.detail) from None
    if "prompt_adherence" in table:
        raise PresetError(path, "request.prompt_adherence", "is the toy world's model's alone: set it in [toy]")
    toy_request, toy_name, toy_description = _toy(path, data.get("toy"), table)
    return Preset(name=name, description=description, request=request, preview=preview, path=path,
                  toy_request=toy_request, toy_description=toy_description, toy_name=toy_name,
                  sets_size="width" in table or "height" in table)


def _toy(path: Path, toy: Any, table: dict[str, Any]) -> tuple[GenerationRequest | None, str | None, str | None]:
    """The `[toy]` table: [request] with its fields replaced, and an optional name and description."""
    if toy is None:
        return None, None, None
    if not isinstance(toy, dict):
        raise PresetError(path, "toy", "must be a table ([toy]) of GenerationRequest fields, a name and a description")
    fields_ = dict(toy)
    texts = {}
    for key in ("name", "description"):
        if key in fields_:
            texts[key] = fields_.pop(key)
            if not isinstance(texts[key], str) or not texts[key].strip():
                raise PresetError(path, f"toy.{key}", f"must be non-empty text, got {texts[key]!r}")
    try:
        return GenerationRequest.from_dict({**table, **fields_}), texts.get("name"), texts.get("description")
    except RequestError as error:
        raise PresetError(path, f"toy.{error.field}", error.detail) from None


def load_presets(folder: str | os.PathLike[str] = PRESETS_DIR) -> list[Preset]:
    """Every `*.toml` preset in `folder`, sorted by file name (hence the numeric prefixes).

    One bad file fails the whole load: a preset that silently vanished from the list would hide the mistake.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"preset folder {folder} does not exist")
    presets = [load_preset(path) for path in sorted(folder.glob("*.toml"), key=lambda p: p.name)]
    for toy in (False, True):  # each world lists its own names: both must be unique
        seen: dict[str, Path] = {}
        for preset in presets:
            name = preset.title(toy)
            if name in seen:
                raise PresetError(preset.path, "toy.name" if toy and preset.toy_name else "name",
                                  f"{name!r} is also the name of {seen[name].name}")
            seen[name] = preset.path
    return presets

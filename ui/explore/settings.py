"""The settings room: settings in and out of the page (presets, links, PNGs), and what each changed."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import gradio as gr

from pipeline.metadata import read_settings
from pipeline.models import is_toy

from .. import render, whatif_render
from ..controls import (
    CONTROL_NAMES,
    CONTROLS,
    MAX_LINK_CHARS,
    query_from_settings,
    read,
    request_from_settings,
    settings_from_query,
    settings_from_request,
)
from ..fields import gr_error, refused
from .defaults import CONTROL_GROUPS, GROUP_TITLES, PNG_LABEL


def updates(settings: dict[str, Any]) -> tuple:
    """One update per control, in `CONTROL_NAMES` order: the settings' value, or left as it is."""
    return tuple(settings[name] if name in settings else gr.skip() for name in CONTROL_NAMES)


def page_base(request: gr.Request | None) -> str:
    """The page's own address, without its query: the base of a link."""
    if request is None:
        return "http://localhost:7860/"
    # The browser's page address (Referer) survives proxies and Spaces' iframes; API clients have none.
    parts = urlsplit(request.headers.get("referer") or str(request.base_url))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


class SettingsRoom:
    """Presets, links and PNGs into the controls and out of them (a part of `Explore`)."""

    def for_model(self, settings: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """Settings from a preset, PNG or link as this model's page takes them, and a note on what it left out.

        The toy model's adherence: a request that leaves it unset (None) ran at the model's default, so the toy
        page shows that number; a real model has no such setting, so its page drops it and says so."""
        if "prompt_adherence" not in settings:
            return settings, ""
        adherence = settings["prompt_adherence"]
        if self.toy:
            return {**settings, "prompt_adherence": self.adherence_default if adherence is None else adherence}, ""
        settings = {name: value for name, value in settings.items() if name != "prompt_adherence"}
        if adherence is None:
            return settings, ""
        return settings, (f"Left out {CONTROLS['prompt_adherence'].label} ({adherence:g}): only the toy world's model "
                          "has it.")

    def snapshot(self, *values: Any) -> dict[str, Any]:
        """The controls as they are, to say afterwards what a preset, PNG or the Invert tab changed."""
        return dict(zip(CONTROL_NAMES, values))

    def changes(self, before: dict[str, Any] | None, settings: dict[str, Any]) -> tuple:
        """(what changed, one update per group: opened where a changed control sits in it)."""
        changed = {name: value for name, value in settings.items()
                   if before is None or not render.same(before.get(name), value)}
        groups = {GROUP_TITLES[CONTROL_GROUPS[name]] for name in changed if name in CONTROL_GROUPS}
        note = render.describe_changes(before, settings, {name: CONTROLS[name].label for name in CONTROL_NAMES},
                                       {name: GROUP_TITLES[g] for name, g in CONTROL_GROUPS.items()})
        return (note, *(gr.update(open=True) if title in groups else gr.skip() for title in GROUP_TITLES.values()))

    def load_preset(self, index: int, before: dict[str, Any] | None = None) -> tuple:
        """(the controls, the preset's teaching text, what changed, the groups to open)."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.presets):
            raise refused(f"choose one of the {len(self.presets)} presets (an index from 0 to "
                          f"{len(self.presets) - 1}), got {str(index)[:40]!r}", label="Presets")
        preset = self.presets[index]
        toy = is_toy(self.pipe)
        request, description = preset.for_model(toy=toy)
        settings, _ = self.for_model(settings_from_request(request))  # a preset's [request] never sets adherence
        if not preset.sets_size and not (toy and preset.toy_request is not None):
            # The size is not the lesson (the toy world's own table gives the toy's): keep the model's own size.
            settings["width"] = settings["height"] = self.default_size
        if preset.preview:
            settings["preview"] = preset.preview
        note = f"**{preset.title(toy)}.** {description}"
        return (*updates(settings), note, *self.changes(before, settings))

    def restore_from_png(self, path: str | None, before: dict[str, Any] | None = None) -> tuple:
        """(the controls, what changed, the groups to open)."""
        if not path:
            return (*updates({}), gr.skip(), *(gr.skip() for _ in GROUP_TITLES))
        try:
            request, seed = read_settings(path)
        except ValueError as exc:  # the file is the field: say so, then what is wrong inside it
            raise refused(gr_error(exc).message, label=PNG_LABEL) from exc
        settings, left_out = self.for_model(settings_from_request(request))
        note, *groups = self.changes(before, settings)
        note = " ".join(filter(None, (f"Restored the settings of {Path(path).name} (seed {seed}).", left_out, note)))
        if request.forks:  # said here too, where the PNG was dropped; the path itself is kept by fork_path_of_png
            note = f"{note}\n\n{whatif_render.fork_path_note(request)}"
        return (*updates(settings), note, *groups)

    def fork_path_of_png(self, path: str | None) -> tuple:
        """A restored PNG that a fork made carries its path: keep it for Generate, which replays it, and say so.
        Outputs: the fork path, the note, the Forget button."""
        if not path:
            return gr.skip(), gr.skip(), gr.skip()
        request, _ = read_settings(path)  # already read once by restore_from_png, so valid
        if not request.forks:
            return None, "", gr.update(visible=False)
        return ([p.to_dict() for p in request.forks], whatif_render.fork_path_note(request),
                gr.update(visible=True))

    def share_link(self, *values: Any, request: gr.Request | None = None) -> str:
        settings = dict(zip(CONTROL_NAMES, values))
        try:
            request_from_settings(settings)  # only valid settings make a link
        except ValueError as exc:
            raise gr_error(exc) from exc
        values = {name: read(name, value) for name, value in settings.items() if value is not None}
        link = f"{page_base(request)}?{query_from_settings(values)}"
        if len(link) > MAX_LINK_CHARS:
            longest = max((name for name in values if isinstance(values[name], str)),
                          key=lambda name: len(query_from_settings({name: values[name]})))
            raise refused(f"it would be {len(link):,} characters long, and links hold at most {MAX_LINK_CHARS:,} "
                          "(browsers and servers refuse longer ones). The longest text is "
                          f"{CONTROLS[longest].label}: {len(values[longest]):,} characters. Shorten it, or share a "
                          "final PNG instead: it carries every setting.", label="Link to these settings",
                          title="Link too long")
        return link

    def restore_from_query(self, request: gr.Request) -> tuple:
        params = dict(request.query_params) if request is not None else {}
        settings, problems = settings_from_query(params)
        settings, left_out = self.for_model(settings)
        for problem in problems:
            gr.Warning(f"Link: ignored {problem}")
        if left_out:
            gr.Warning(f"Link: {left_out}")
        return updates(settings)

"""Gradio input components that read their payload strictly and name themselves in every error.

Gradio checks and converts a payload before a handler runs, in ways that either say nothing of which input
failed ("Value 0 is less than minimum value 1.", "'<' not supported between 'str' and 'int'", "cannot
convert float NaN to integer") or quietly change the value (a Seed of 2.7 rounded to 3, a list prompt turned
into its string form). API clients send many fields at once, so these components read the raw payload
first, as `ui.controls.read` does for the control with their label, and put their label in every error.
"""

from __future__ import annotations

import logging
import math
import traceback

import gradio as gr

from pipeline import RequestError
from pipeline.memory import free_cache, is_out_of_memory, out_of_memory_message

from .controls import BY_LABEL, check_text, label_of, read

logger = logging.getLogger(__name__)


class Refused(gr.Error):
    """A value the app does not take, with the label of the control it names (None where it names none): the
    server marks that control from this attribute, never by reading the label back out of the text."""

    def __init__(self, message: str, label: str | None = None, title: str = "Invalid input",
                 visible: bool = True) -> None:
        super().__init__(message, title=title, visible=visible, print_exception=False)
        self.label = label


def refused(message: str, label: str | None = None, title: str = "Invalid input") -> Refused:
    """The error for a value the app does not take: shown on the page like any `gr.Error`, but an expected
    outcome, so the server logs one line for it (`NamedErrorBlocks.process_api`), not a traceback. With `label`,
    the message starts with it ("Seed: must be ...") and the error carries it (`Refused.label`)."""
    return Refused(f"{label}: {message}" if label else message, label, title)


def gr_error(exc: Exception, labels: dict[str, str] | None = None, memory: str | None = None) -> gr.Error:
    """The one conversion of a library error into what the page shows: a control named by its label.

    `RequestError` names its field; `labels` (a tab's own field -> label map) or the Explore tab's labels
    turn it into the control the person sees, followed by what is allowed. Other `ValueError`s are invalid
    input too. Running out of GPU memory frees the cache and says what to lower and which `--memory` mode
    to try (after `memory`, the mode in use, if given). Anything else is a failed run, said as such (never a
    blank image). Callers `raise` it.
    """
    if is_out_of_memory(exc):
        logger.warning("out of memory: %s", exc)
        traceback.clear_frames(exc.__traceback__)  # the failed run's tensors, so the cache can let them go
        free_cache()
        return gr.Error(out_of_memory_message(memory), title="Out of memory")
    if isinstance(exc, RequestError):
        return refused(exc.detail, label=(labels or {}).get(exc.field) or label_of(exc.field))
    return refused(str(exc)) if isinstance(exc, ValueError) else gr.Error(str(exc), title="Generation failed")


def answers_refusals(fn):
    """Mark an event's handler as one that says its inputs' refusals itself, in its own outputs: instead of
    failing before the handler runs, a value that an input refuses (Steps 0, an empty Seed) reaches it as the
    `Refused` in place of every input (`NamedErrorBlocks.preprocess_data`). Read it with `refusal_in`."""
    fn.answers_refusals = True
    return fn


def refusal_in(*values) -> Refused | None:
    """The refusal that an `answers_refusals` handler received in place of its inputs, or None."""
    return next((value for value in values if isinstance(value, Refused)), None)


class NamedErrors:
    is_template = True  # render with Gradio's own component of the base class

    def get_block_name(self) -> str:
        # Gradio names the Svelte component after `__class__.__base__`, which here is this mixin: the page
        # would ask for a "namederrors" component that does not exist, and never finish loading.
        gradio_class = next(c for c in type(self).__mro__ if c.__module__.startswith("gradio."))
        return gradio_class.__name__.lower()

    get_block_class = get_block_name

    def check(self, payload):
        """The payload as the control takes it, or `RequestError`; None (nothing sent) passes through."""
        name = BY_LABEL.get(self.label)
        if payload is None or name is None:
            return payload
        return read(name, payload)

    def preprocess(self, payload):
        try:
            return super().preprocess(self.check(payload))
        except RequestError as exc:
            raise refused(exc.detail, label=self.label) from None
        except gr.Error as exc:
            detail = exc.message
            if getattr(self, "minimum", None) is not None or getattr(self, "maximum", None) is not None:
                detail = f"must be from {self.minimum} to {self.maximum}, got {payload}"
            raise refused(detail, label=self.label) from None
        except (TypeError, ValueError, OverflowError) as exc:
            raise refused(f"cannot use {str(payload)[:40]!r} ({exc})"[:280], label=self.label) from None


class _Number(NamedErrors):
    def check(self, payload):
        if payload is not None and (isinstance(payload, bool) or not isinstance(payload, (int, float))
                                    or not math.isfinite(payload)):
            raise RequestError(self.label, f"must be a finite number, got {str(payload)[:40]!r}")
        return super().check(payload)


class _Choice(NamedErrors):
    def check(self, payload):
        values = [value for _, value in self.choices]
        if payload is not None and payload not in values:
            shown = ", ".join(map(str, values))
            raise RequestError(self.label, f"must be one of {shown}; got {str(payload)[:40]!r}")
        return super().check(payload)


class FieldSlider(_Number, gr.Slider):
    def check(self, payload):
        if payload is None:  # a slider always holds a number; Gradio's own check would fail on None with "'<'"
            raise RequestError(self.label, f"must be a number from {self.minimum} to {self.maximum}, got nothing")
        return super().check(payload)


class FieldNumber(_Number, gr.Number):
    pass


class FieldRadio(_Choice, gr.Radio):
    pass


class FieldDropdown(_Choice, gr.Dropdown):
    pass


class FieldTextbox(NamedErrors, gr.Textbox):
    def check(self, payload):
        if payload is not None:
            check_text(self.label, payload)  # a str, not too long, valid Unicode
        super().check(payload)
        # The text itself, read or not: a NUMBERS control reads "10, 5" as a tuple, which gr.Textbox would
        # turn back into the text "(10.0, 5.0)"; the handler reads the text again (`controls.read`).
        return payload


class FieldCheckbox(NamedErrors, gr.Checkbox):
    def check(self, payload):
        if payload is not None and not isinstance(payload, bool):
            raise RequestError(self.label, f"must be true or false, got {str(payload)[:40]!r}")
        return super().check(payload)


class FieldImage(NamedErrors, gr.Image):
    """An image upload that names itself in errors. Make it with `type="filepath", image_mode=None`: then the
    handler gets the file's path undecoded, and `pipeline.uploads.load_image` checks the size in its header
    before any pixel is decoded. (Gradio itself only opens the file, which reads the header.) Gradio reads a
    component's settings from its `__init__` signature, so this class keeps gr.Image's own."""

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except gr.Error:
            raise
        except FileNotFoundError:  # the upload was pruned from the bounded cache (ui/storage.py) before it was used
            raise refused("the uploaded file is no longer on the server (its cache keeps only the newest files): "
                          "upload it again", label=self.label) from None
        except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for a file that is not an image
            raise refused(f"is not an image this app can read ({type(exc).__name__})", label=self.label) from None


class FieldFile(NamedErrors, gr.File):
    pass


class NamedErrorBlocks(gr.Blocks):
    """Blocks whose file inputs name themselves when Gradio refuses them before any component code runs.

    Gradio moves an input's files into its cache and validates their data model before `preprocess`: a path
    that was never uploaded ("Cannot move /etc/passwd to the gradio cache dir...") or a plain string where
    a file belongs (a pydantic "validation error for ImageData") fails there, naming no input. Every endpoint
    of this app takes at most one file input, so such a failure is that input's, and is said so.
    """

    async def preprocess_data(self, block_fn, inputs, state, explicit_call=False):
        try:
            return await self._preprocess_named(block_fn, inputs, state, explicit_call)
        except Refused as exc:
            if not getattr(block_fn.fn, "answers_refusals", False):
                raise
            # The handler says it, in the same response (see `answers_refusals`): no second event, no round trip.
            return [exc] * len(block_fn.inputs)

    async def _preprocess_named(self, block_fn, inputs, state, explicit_call):
        try:
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        except gr.Error:
            raise
        except Exception as exc:
            files = [b for b in block_fn.inputs if isinstance(b, (gr.Image, gr.File))]
            if len(files) != 1:
                raise
            detail = str(exc).splitlines()[0][:160]
            raise refused(f"must be a file uploaded to this app ({detail})", label=files[0].label) from None

    # Events that only describe the controls as they change (a plot of the schedule, a note): a value they
    # refuse is said once, by Generate (its status line, the control outlined and a message), not by a message
    # per keystroke from each of them.
    QUIET = ("describe_", "count_tokens", "follow_seed")

    async def process_api(self, block_fn, *args, **kwargs):
        """Refused values, wherever raised (a control's own check or a handler), are logged in one line."""
        try:
            return await super().process_api(block_fn, *args, **kwargs)
        except gr.Error as exc:
            if exc.print_exception:
                raise
            logger.info("refused: %s", exc.message)
            fn = self.fns[block_fn] if isinstance(block_fn, int) else block_fn
            if (getattr(fn, "api_name", None) or "").startswith(self.QUIET):
                raise Refused(exc.message, getattr(exc, "label", None), exc.title, visible=False) from None
            raise

"""Gradio input components whose validation errors name the control they belong to."""

from __future__ import annotations

import gradio as gr


class NamedErrors:
    """Gradio checks bounds and choices before a handler runs, with messages like "Value 0 is less than
    minimum value 1." that do not say which input. API clients send many fields at once, so these
    components put their label in front of the message."""

    is_template = True  # render with Gradio's own component of the base class

    def get_block_name(self) -> str:
        # Gradio names the Svelte component after `__class__.__base__`, which here is this mixin: the page
        # would ask for a "namederrors" component that does not exist, and never finish loading.
        gradio_class = next(c for c in type(self).__mro__ if c.__module__.startswith("gradio."))
        return gradio_class.__name__.lower()

    get_block_class = get_block_name

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except gr.Error as exc:
            if getattr(self, "minimum", None) is not None or getattr(self, "maximum", None) is not None:
                detail = f"must be from {self.minimum} to {self.maximum}, got {payload}"
            else:
                detail = exc.message
            raise gr.Error(f"{self.label}: {detail}", title="Invalid input") from exc


class FieldSlider(NamedErrors, gr.Slider):
    pass


class FieldNumber(NamedErrors, gr.Number):
    pass


class FieldRadio(NamedErrors, gr.Radio):
    pass


class FieldDropdown(NamedErrors, gr.Dropdown):
    pass

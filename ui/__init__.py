"""CFG Explorer's Gradio front end. The only package that imports gradio."""

from .handlers import CONTROL_NAMES, Handlers
from .layout import build_demo

__all__ = ["CONTROL_NAMES", "Handlers", "build_demo"]

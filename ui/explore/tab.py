"""`Explore`, the tab's behaviour: the rooms joined over the loaded models (one instance serves every session)."""

from __future__ import annotations

import threading

from pipeline.models import is_toy

from ..handlers import Handlers
from .describe import DescribeRoom
from .revisit import RevisitRoom
from .run import RunRoom
from .settings import SettingsRoom


class Explore(RunRoom, RevisitRoom, DescribeRoom, SettingsRoom):
    """The Explore tab's behaviour; it also serves the what-if panel as its `run_stream.RunStreams`."""

    def __init__(self, handlers: Handlers, default_size: int | None = None) -> None:
        self.handlers = handlers
        self.pipe, self.taesd, self.model_name = handlers.pipe, handlers.taesd, handlers.model_name
        self.presets, self.output_dir, self.jobs = handlers.presets, handlers.output_dir, handlers.jobs
        # Width and Height when a preset does not set them: the loaded model's own size, or the size the page starts at
        self.default_size = default_size or self.pipe.default_sample_size * self.pipe.vae_scale_factor
        self._lock = threading.Lock()
        self.toy = is_toy(self.pipe)
        # The toy model's own adherence, which the page starts from; a real model has none
        self.adherence_default = self.pipe.unet.config.prompt_adherence if self.toy else None

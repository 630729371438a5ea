"""Constants that the app's command line needs before anything heavy is imported (no torch here)."""

DEFAULT_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"

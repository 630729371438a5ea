"""CFG Explorer: explore classifier-free guidance in Stable Diffusion XL, step by step, in the browser.

Entry point only: parse flags, load the model (or fall back to the toy world), build the page, launch.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

logger = logging.getLogger("cfg_explorer")

MODEL_ENV = "CFG_EXPLORER_MODEL"  # lets a Hugging Face Space pick its model in the Space settings
# Gradio keeps a copy of every component's value per session (about 0.5 MB for this page), and a REST call
# without a session hash opens a new session each time: 10,000 sessions (Gradio's default) would be GBs.
# The oldest sessions beyond this are dropped (their pages lose only the step history of their last run).
SESSIONS_ENV = "CFG_EXPLORER_MAX_SESSIONS"
DEFAULT_SESSIONS = 200


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from pipeline import DEFAULT_MODEL

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default=os.environ.get(MODEL_ENV, DEFAULT_MODEL),
        help=f"hub id, local diffusers folder, single .safetensors file, 'toy' for the toy world (an exact "
        f"denoiser over drawn shapes, offline), or 'tiny' for the random test model (default: ${MODEL_ENV} or "
        f"{DEFAULT_MODEL}; the toy world when it cannot be loaded)",
    )
    parser.add_argument("--device", default="auto", help="cuda, mps, cpu, or auto (default: the best available)")
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
        help="weights' precision; auto is float16 on a GPU and float32 on CPU",
    )
    parser.add_argument(
        "--memory", default="auto", choices=["auto", "high", "offload", "sequential"],
        help="where the weights live: high (all on the GPU), offload (one model on the GPU at a time), "
        "sequential (one layer at a time: least memory, slowest), or auto (picked from the free GPU memory)",
    )
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on; 0.0.0.0 to serve your network (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
                        help="port to listen on (default: 7860)")
    parser.add_argument("--share", action="store_true", help="also ask Gradio for a public *.gradio.live link")
    parser.add_argument("--auth", metavar="USER:PASSWORD", help="require this login for the page and the API")
    parser.add_argument("--backend", default="local", choices=["local", "ray"],
                        help="where runs execute: local (this process, one at a time) or ray (a pool of workers on "
                        "Ray Serve; pip install -r requirements-serve.txt)")
    parser.add_argument("--replicas", type=int, default=1,
                        help="with --backend ray: denoiser workers to start (one GPU each where there are GPUs)")
    parser.add_argument("--ray-address", metavar="ADDRESS",
                        help="with --backend ray: join this Ray cluster (auto, or ray://host:10001) instead of "
                        "starting one on this machine")
    args = parser.parse_args(argv)
    if args.replicas < 1:
        parser.error(f"--replicas must be at least 1, got {args.replicas}")
    if args.backend != "ray" and (args.ray_address or args.replicas != 1):
        parser.error("--replicas and --ray-address need --backend ray")
    if args.auth is not None and (":" not in args.auth or not args.auth.split(":", 1)[0]):
        parser.error("--auth must look like user:password")
    return args


def load_models(args: argparse.Namespace):
    """The pipeline, the preview decoder for "tiny", the model's name, and why we fell back (None if we did not)."""
    from pipeline import ModelLoadError, load_pipeline, toy_pipeline

    reason = None
    try:
        pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype, memory=args.memory)
        name = args.model
    except ModelLoadError as exc:
        reason = exc.summary
        logger.warning("Could not load %s: %s. Starting the toy world instead: an exact denoiser over drawn shapes.",
                       args.model, exc)
        pipe, name = toy_pipeline(), "toy"
    return pipe, preview_autoencoder(pipe, name), name, reason


def preview_autoencoder(pipe, name: str):
    """The small autoencoder the "tiny" preview decoder uses for this model (None where it cannot be had)."""
    from pipeline import tiny_taesd
    from pipeline.models import ToyPreviewDecoder
    from pipeline.previews import load_taesdxl

    if name == "toy":  # its own linear VAE is cheaper than any tiny autoencoder, and exact
        return ToyPreviewDecoder(pipe.vae)
    if name == "tiny":
        return tiny_taesd()
    try:
        return load_taesdxl(device=pipe._execution_device, dtype=pipe.unet.dtype)  # offloaded: pipe.device is the CPU
    except Exception as exc:  # previews still work with the linear and full-VAE decoders
        logger.warning("Tiny autoencoder (madebyollin/taesdxl) unavailable: %s. Choose another preview decoder.", exc)
        return None


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)

    from pipeline.models import memory_choice
    from pipeline.presets import load_presets
    from ui import Handlers, build_demo
    from ui import render
    from ui.storage import InstanceStorage, address_free

    # Each instance keeps its files in a folder of its own, named after its address (see ui/storage.py).
    if not address_free(args.host, args.port):
        sys.exit(f"error: {args.host}:{args.port} is already in use; pick another --port")
    storage = InstanceStorage.for_address(args.host, args.port)
    left = storage.claim()
    if left:
        logger.info("Removed %d files that an earlier instance on %s:%d left behind", left, args.host, args.port)

    try:
        # With --backend ray the workers hold the model on their devices; the page keeps a CPU copy for what it
        # computes itself (token counts, what-if recombination, the other tabs)
        page_args = argparse.Namespace(**{**vars(args), "device": "cpu", "dtype": "auto", "memory": "auto"}) \
            if args.backend == "ray" else args
        pipe, taesd, name, reason = load_models(page_args)
    except ValueError as exc:  # a bad --device/--dtype combination: say which flag, and stop
        sys.exit(f"error: {exc}")
    handlers = Handlers(pipe, taesd=taesd, model_name=name, presets=load_presets(), storage=storage)
    concurrency = 1
    if args.backend == "ray":  # imported only here: without --backend ray, Ray is never imported
        from serving import cluster
        from serving.frontend import RemoteRuns

        try:
            handle = cluster.start(args.ray_address, args.replicas, model=name, device=args.device,
                                   dtype=args.dtype, memory=args.memory)
        except (cluster.ClusterStartError, ValueError) as exc:
            cluster.shutdown()
            sys.exit(f"error: {exc}")
        handlers.remote = RemoteRuns(handle, args.replicas)
        # Serve queues and routes now: the page passes runs on until Serve's own queue is full, which it says
        concurrency = cluster.page_concurrency(args.replicas)
    default_size = pipe.default_sample_size * pipe.vae_scale_factor
    memory = memory_choice(pipe).describe() if reason is None else ""  # a fallback model has no memory mode to tell
    if args.backend == "ray":  # the page's own copy is on the CPU: say where runs go instead
        memory = cluster.describe(handle, args.replicas)
    demo = build_demo(handlers, banner=render.banner(name, reason, memory), default_size=default_size)
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    demo.queue(default_concurrency_limit=concurrency)
    demo.launch(
        server_name=args.host, server_port=args.port, share=args.share, auth=auth,
        prevent_thread_lock=True, show_error=True,
        state_session_capacity=int(os.environ.get(SESSIONS_ENV, DEFAULT_SESSIONS)),
    )
    if args.share and not demo.share_url:
        logger.warning(
            "No share link could be made (Gradio's share server is unreachable: offline or blocked). "
            "Still serving locally at %s", demo.local_url,
        )
    try:
        demo.block_thread()
    finally:
        if args.backend == "ray":
            cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main())

"""The toy world's figures: what guidance does when the denoiser is exact, measured as tests/unit/test_toy_world.py
measures it, printed in full (the tests assert on these; this prints the curves behind them).

    python -m bench.toy_figures [--size 128 --steps 20]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

import numpy as np
import torch

from pipeline import toy_pipeline
from pipeline.inversion import invert, reconstruct
from pipeline.loop import denoise
from pipeline.models.toy import Item, draw, nearest_items
from pipeline.previews import vae_decode
from tests.unit import test_toy_world as world

SCALES = (1.0, 3.0, 7.5, 15.0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=world.SIZE)
    p.add_argument("--steps", type=int, default=world.STEPS)
    args = p.parse_args(argv)
    world.SIZE, world.STEPS = args.size, args.steps
    torch.set_num_threads(2)
    pipe = toy_pipeline(prompt_adherence=1.0)  # the exact data model, as tests/unit/test_toy_world.py
    print(f"toy world: {args.size} px, {args.steps} Euler steps, seeds 0..N-1")

    landed = nearest_items(pipe, world.final(pipe, "red circle", 7.5)[0])
    print("\nprompt following, 'red circle' at s=7.5, 16 seeds:", dict(Counter((i.colour, i.shape) for i in landed)))
    landed = nearest_items(pipe, world.final(pipe, "red circle", 0.0)[0])
    print("unconditional (s=0), 16 seeds:", len({i.caption for i in landed}), "distinct captions")

    print("\nmode-seeking, 32 seeds, entropy in nats of the nearest item / of (size, place); big shapes; chroma")
    for prompt in ("circle", "red circle"):
        for scale in SCALES:
            latents, images = world.final(pipe, prompt, scale, range(32))
            landed = nearest_items(pipe, latents)
            item = world.entropy([i.caption for i in landed])
            place = world.entropy([(i.size, i.vertical, i.horizontal) for i in landed])
            big = sum(i.size == "big" for i in landed)
            pixels = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32)).flatten(0, 1) for im in images])
            mean_chroma = float((pixels.amax(-1) - pixels.amin(-1)).mean())
            print(f"  {prompt!r:13} s={scale:<4g} item {item:.3f}  size+place {place:.3f}  big {big:2d}/32  "
                  f"final images' mean chroma {mean_chroma:.1f}/255")
    data = pipe.unet.items(args.size // 8, args.size // 8).float().view(-1, 4, args.size // 8, args.size // 8)
    data_peak = float(world.chroma(vae_decode(pipe.vae, data)).max())
    print(f"\nsaturation: the largest chroma of the predicted image x̂0 over a run ('red circle', 8 seeds); "
          f"the data's is {data_peak:.2f} (in [-1, 1] units, max 2)")
    for scale in SCALES:
        peaks = [float(world.chroma(vae_decode(pipe.vae, e.pred_x0)).max())
                 for e in denoise(pipe, world.request("red circle", scale, range(8)))]
        print(f"  s={scale:<4g} peak {max(peaks):.2f} at step {peaks.index(max(peaks)) + 1}; last step {peaks[-1]:.2f}")

    landed = nearest_items(pipe, world.final(pipe, "red", 7.5, mode="reversed")[0])
    print("\nreversed, 'red' at s=7.5, 16 seeds:", dict(Counter(i.colour for i in landed)))
    landed = nearest_items(pipe, world.final(pipe, "circle", 7.5, mode="negative_direction", negative_prompt="blue")[0])
    print("negative direction 'blue', prompt 'circle', s=7.5:", dict(Counter((i.colour, i.shape) for i in landed)))

    start = draw(Item("big", "red", "circle", "top", "left"), args.size, args.size)
    print("\nimg2img from a big red circle, prompt 'blue', s=7.5, 8 seeds: mean(B - R) over the image, nearest items")
    for strength in (0.0, 0.1, 0.25, 0.5, 0.75, 1.0):
        latents, images = world.final(pipe, "blue", 7.5, range(8), init_image=start, strength=strength)
        pixels = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32)).flatten(0, 1) for im in images])
        blue = float((pixels[..., 2] - pixels[..., 0]).mean())
        landed = Counter(i.caption for i in nearest_items(pipe, latents))
        print(f"  strength {strength:<4g} B-R {blue:6.1f}  ", dict(landed))

    size = 128
    print(f"\nDDIM inversion at {size} px: PSNR (dB) of the round trip (latent distance from the nearest data item)")
    images = {"data image (big red circle, top left)": (draw(Item("big", "red", "circle", "top", "left"), size, size),
                                                        "big red circle top left"),
              "off-data image (purple circle, centre)": (world.off_data_image(size), "circle")}
    items = pipe.unet.items(size // 8, size // 8)
    for name, (image, prompt) in images.items():
        print(f"  {name}, prompt {prompt!r}")
        for scale in (1.0, 5.0):
            row = []
            for steps in (5, 10, 25, 50):
                inversion = invert(pipe, image, prompt, steps, scale)
                result = reconstruct(pipe, image, inversion)
                final = list(world.generate(pipe, inversion.request))[-1].latents
                gap = float(torch.cdist(final.flatten(1).double(), items).min())
                row.append(f"{steps}: {result.psnr:.2f} ({gap:.2f})")
            print(f"    guidance {scale:g}:  " + "   ".join(row))


if __name__ == "__main__":
    main(sys.argv[1:])

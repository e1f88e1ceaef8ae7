"""diffusers StableDiffusionPipeline (torch, fp32, CPU) on the benchmark's SD checkpoint.

    python -m bench.diffusers_peer SD_DIR [--short 1 --long 3 --repeats 1 --threads 2]

Runs in its own process (torch and ~4 GB of fp32 weights stay out of the bench process)
and prints one JSON line: load time and end-to-end seconds of short and long images.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--short", type=int, default=1)
    parser.add_argument("--long", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--cfg", type=float, default=7.5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(args.checkpoint, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - started

    def image(steps: int, seed: int) -> float:
        began = time.perf_counter()
        with torch.inference_mode():
            pipe(
                "a lighthouse on a cliff at dusk, oil painting, warm light, detailed",
                width=args.width,
                height=args.height,
                num_inference_steps=steps,
                guidance_scale=args.cfg,
                generator=torch.Generator().manual_seed(seed),
                output_type="pil",
            )
        return time.perf_counter() - began

    image(args.short, 99)  # warm-up
    short = [image(args.short, r) for r in range(args.repeats)]
    long = [image(args.long, r) for r in range(args.repeats)]
    print(json.dumps({"load_s": load_s, "short_s": short, "long_s": long}))


if __name__ == "__main__":
    main()

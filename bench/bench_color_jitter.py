"""RandomColorJitter's kernel in µs per 224 px image, one thread: the vectorised kernel (blocks of rows in L1) of
torchstrap_runtime.data.color_jitter against the per-pixel HSV kernel it replaced (tests/color_jitter_reference.py).

A batch of 224 x 224 crops of the sample photos, jittered with CoKe's magnitudes (brightness 0.4, contrast 0.4,
saturation 0.2, hue 0.1, p 1: every image jittered), in the fixed order and in torchvision's random order.
One round = one pass of each kernel over the batch, interleaved; µs per image is process CPU time / images,
with numba limited to one thread (the loader runs one sample per thread). Also reports the largest difference
between the two kernels' outputs on the batch (0: the same bytes).

    python bench/bench_color_jitter.py [--quick] [--rounds N]
"""
from __future__ import annotations

import sys
import time
from typing import Callable

import numba
import numpy as np

from common import REPO_DIR, Summary, interleave, parser, print_table, write_results

sys.path.insert(0, str(REPO_DIR / "tests"))
from color_jitter_reference import per_pixel_color_jitter_kernel  # noqa: E402

from torchstrap_runtime.data.color_jitter import RandomColorJitter, color_jitter_kernel  # noqa: E402

SIZE = 224
OLD, NEW = "per-pixel HSV kernel (before)", "vectorised kernel, L1-sized blocks"


def photo_crops(count: int, seed: int = 0) -> np.ndarray:
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    out = np.empty((count, SIZE, SIZE, 3), np.uint8)
    for i in range(count):
        photo = photos[i % len(photos)]
        top, left = rng.integers(0, photo.shape[0] - SIZE + 1), rng.integers(0, photo.shape[1] - SIZE + 1)
        out[i] = photo[top:top + SIZE, left:left + SIZE]
    return out


def per_image(kernel, images: np.ndarray, params: np.ndarray) -> Callable[[], float]:
    indices, key = np.arange(len(images)), np.uint64(1234)

    def run() -> float:
        batch = images.copy()
        t0 = time.process_time()
        kernel(batch, None, indices, key, params)
        return (time.process_time() - t0) / len(images) * 1e6

    return run


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    rounds = args.rounds or (3 if args.quick else 10)
    count = 16 if args.quick else 64
    numba.set_num_threads(1)
    images = photo_crops(count)
    results = {}
    for random_order in (False, True):
        op = RandomColorJitter(0.4, 0.4, 0.2, 0.1, p=1.0, seed=0, random_order=random_order)
        params = op.params()
        contenders = {OLD: per_image(per_pixel_color_jitter_kernel, images, params),
                      NEW: per_image(color_jitter_kernel, images, params)}
        for run in contenders.values():
            run()  # compile or load from the numba cache
        old_out = per_pixel_color_jitter_kernel(images.copy(), None, np.arange(count), np.uint64(1234), params)
        new_out = color_jitter_kernel(images.copy(), None, np.arange(count), np.uint64(1234), params)
        diff = np.abs(old_out.astype(int) - new_out.astype(int))
        order = "random order" if random_order else "fixed order"
        print(f"=== colour jitter, {order}: {count} images of {SIZE} px, 1 thread ===")
        values = interleave(contenders, rounds)
        summaries = [Summary(name, "µs/img", v) for name, v in values.items()]
        print_table(f"RandomColorJitter kernel, {order} (µs per {SIZE} px image, lower is better), ratio to the "
                    "kernel before", summaries, reference=OLD)
        print(f"  outputs: max |difference| {diff.max()}, pixels that differ {np.mean(diff > 0):.2e}\n")
        results[order] = {"contenders": [s.as_dict() for s in summaries], "max_abs_difference": int(diff.max()),
                          "share_differing": float(np.mean(diff > 0))}
    write_results("color_jitter" + ("_quick" if args.quick else ""),
                  {"quick": args.quick, "images": count, "size": SIZE, "rounds": rounds, "threads": 1,
                   "results": results})


if __name__ == "__main__":
    main()

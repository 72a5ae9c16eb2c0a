"""Training-batch augmentation: torchvision per image in the loader vs ``data.gpu_augment``.

Both produce normalised RandomResizedCrop + flip batches from decoded (cached) images:
- ``loader``: the default path, torchvision transforms on each PIL image, then collation;
- ``batch``: the ``data.gpu_augment`` path, uint8 conversion per image (what the loader
  still does), collation, then one :class:`fewshot.data.BatchAugment` call on the device.

Images are random 84 x 84 RGB PIL images (miniImageNet's size; the cost does not depend on
the pixels). Reported: images per second of each path and their ratio, in one run.

    python benchmarks/augment.py --batch 128 --repeats 10 [--device cuda]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image


from _common import write_results  # noqa: E402
from fewshot.data import build_transform, device_augment  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=84)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="benchmarks/augment.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8))
              for _ in range(args.batch)]
    loader_t = build_transform("deepemd", args.size, train=True)
    decode_t = build_transform("deepemd", args.size, train=True, on_device=True)
    augment = device_augment(args.size)

    def loader_path(step: int) -> torch.Tensor:
        return torch.stack([loader_t(im) for im in images]).to(device)

    def batch_path(step: int) -> torch.Tensor:
        batch = torch.stack([decode_t(im) for im in images]).to(device)
        return augment(batch, torch.Generator().manual_seed(step))

    rows = []
    for name, fn in (("loader", loader_path), ("batch", batch_path)):
        fn(0)                                           # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        for step in range(args.repeats):
            out = fn(step)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = (time.perf_counter() - t) / args.repeats
        assert out.shape == (args.batch, 3, args.size, args.size)
        rows.append({"path": name, "seconds_per_batch": seconds, "images_per_second": args.batch / seconds})
        print(f"{name:7s} {seconds * 1000:8.1f} ms per batch of {args.batch}  "
              f"{args.batch / seconds:9.0f} images/s")
    ratio = rows[0]["seconds_per_batch"] / rows[1]["seconds_per_batch"]
    print(f"batch augmentation is {ratio:.1f}x the loader path's throughput")
    write_results(args.out, rows, device, speedup=ratio)


if __name__ == "__main__":
    main()

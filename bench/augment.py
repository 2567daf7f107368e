"""Batched augmentation cost: kornia's random crop and flip against lightdist's crop, side by side.

    python bench/augment.py            # on CUDA when available, else CPU
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kornia.augmentation as K  # noqa: E402
import torch  # noqa: E402

from bench.common import write_result  # noqa: E402
from lightdist.vision.augment import ImageAugmentation  # noqa: E402


def timeit(fn, x, n: int = 50) -> float:
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    for _ in range(5):
        fn(x)
    sync()
    start = time.perf_counter()
    for _ in range(n):
        fn(x)
    sync()
    return (time.perf_counter() - start) / n * 1000


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.rand(256, 3, 32, 32, device=device)
    ops = {
        "kornia RandomCrop(pad 4), slice": K.RandomCrop((32, 32), padding=4, padding_mode="reflect"),
        "kornia RandomCrop(pad 4), resample": K.RandomCrop((32, 32), padding=4, padding_mode="reflect",
                                                            cropping_mode="resample"),
        "kornia RandomHorizontalFlip": K.RandomHorizontalFlip(),
        "lightdist crop (pad 4)": ImageAugmentation(crop_padding=4),
        "lightdist crop + flip (as configured for CIFAR)": ImageAugmentation(crop_padding=4, horizontal_flip=True),
    }
    timings = {name: timeit(op, x) for name, op in ops.items()}
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"256 x 3 x 32 x 32 images on {name}, ms per batch:")
    for op, ms in timings.items():
        print(f"  {op:50s} {ms:7.3f}")
    write_result(f"augment_{device}", {"device": name, "batch": list(x.shape), "ms_per_batch": timings})


if __name__ == "__main__":
    main()

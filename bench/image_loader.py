"""Images/s of lightdist's image-folder pipeline against a plain torchvision ImageFolder + DataLoader.

Both read the same JPEG files (generated here, seeded: --images of 256-500 px in 10 class
folders) through the same training transforms (lightdist's preset: RandomResizedCrop to --size
+ horizontal flip, uint8 out), with the same workers and batch size. The plain side is the
textbook loader: torchvision.datasets.ImageFolder (PIL decoding) + DataLoader; lightdist's is
data=image_folder (torchvision.io decoding). They run alternately, --repeats times each, in this
process, after one untimed epoch each (persistent workers started, files in the page cache); an
epoch is timed from asking for its iterator to its last batch, and the median of the repeats is
reported.

    python bench/image_loader.py                       # CPU: the loaders alone
    python bench/image_loader.py --gpu                 # also timm ResNet-50 training, bf16, 1 GPU

--gpu adds training images/s: timm resnet50, bf16 autocast, channels_last, SGD, fed by lightdist's
loader, once through lightdist (+experiment=imagefolder_resnet50, trainer.max_steps) and once
through a plain PyTorch loop on the same loader.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import compose_resolved, step_times, write_result  # noqa: E402


def write_jpegs(root: Path, count: int, seed: int = 0) -> Path:
    """count JPEGs of 256-500 px per side in root/class<k>/: smooth random colour fields (a few coarse
    cells upsampled, plus mild noise), which compress like photographs rather than like noise."""
    import warnings

    import torch.nn.functional as F
    from torchvision.io import write_jpeg

    # torchvision 0.29 announces TorchCodec as its successor on every encode
    warnings.filterwarnings("ignore", "The image decoding and encoding capabilities", DeprecationWarning)
    rng = np.random.default_rng(seed)
    for i in range(count):
        h, w = (int(v) for v in rng.integers(256, 501, 2))
        cells = torch.from_numpy(rng.uniform(0, 255, (1, 3, 6, 6)).astype(np.float32))
        image = F.interpolate(cells, size=(h, w), mode="bicubic", align_corners=False)[0]
        image = image + torch.from_numpy(rng.normal(0, 8, (3, h, w)).astype(np.float32))
        folder = root / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        write_jpeg(image.clamp(0, 255).to(torch.uint8), str(folder / f"{i:05d}.jpg"), quality=90)
    return root


def images_per_second(loader) -> tuple[float, int]:
    """One epoch, from asking for the iterator (persistent workers already started) to the last batch."""
    start, seen = time.perf_counter(), 0
    for images, _ in loader:
        seen += len(images)
    return seen / (time.perf_counter() - start), seen


def lightdist_module(folder: Path, args):
    from hydra.utils import instantiate

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_resolved(["data=image_folder", f"data.path={folder}", f"data.image_size={args.size}",
                                "data.val_size=0.0", "data.test_size=0.0", "data.normalize=none",
                                f"data.batch_size={args.batch}", f"data.num_workers={args.workers}",
                                f"data.persistent_workers={args.workers > 0}", "data.stats_file=null"], Path(tmp))
    dm = instantiate(cfg.data)
    dm.setup("fit")
    return dm


def plain_loader(folder: Path, transform, args):
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from torchvision.transforms import v2

    dataset = datasets.ImageFolder(str(folder), transform=v2.Compose([v2.PILToTensor(), transform]))
    return DataLoader(dataset, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                      persistent_workers=args.workers > 0)


def loaders(folder: Path, args) -> dict:
    dm = lightdist_module(folder, args)
    plain = plain_loader(folder, dm.train_transform, args)
    light = dm.train_dataloader()
    rates: dict[str, list[float]] = {"plain": [], "lightdist": []}
    for loader in (plain, light):
        images_per_second(loader)  # warm-up epoch
    for repeat in range(args.repeats):
        for name, loader in (("plain", plain), ("lightdist", light)):
            rate, seen = images_per_second(loader)
            rates[name].append(rate)
            print(f"  repeat {repeat + 1}: {name:9s} {rate:8.1f} images/s ({seen} images)", flush=True)
    plain_rate, light_rate = statistics.median(rates["plain"]), statistics.median(rates["lightdist"])
    print(f"loader: plain ImageFolder {plain_rate:.1f} images/s, lightdist {light_rate:.1f} images/s, "
          f"ratio {light_rate / plain_rate:.2f}x")
    return {"plain_images_per_s": round(plain_rate, 1), "lightdist_images_per_s": round(light_rate, 1),
            "ratio": round(light_rate / plain_rate, 3), "runs": {k: [round(v, 1) for v in r] for k, r in rates.items()},
            "images_per_epoch": len(dm.train_set)}


def plain_training(folder: Path, args, steps: int, warmup: int) -> float:
    """A plain bf16 loop (timm resnet50, channels_last, SGD) on lightdist's loader: images/s after warmup."""
    import timm

    dm = lightdist_module(folder, args)
    model = timm.create_model("resnet50", num_classes=len(dm.class_names)).cuda().to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    times, done = [], 0
    while done < steps:
        for images, labels in dm.train_dataloader():
            x = images.cuda(non_blocking=True).float().div_(255).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = loss_fn(model(x), labels.cuda(non_blocking=True))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            torch.cuda.synchronize()
            times.append(time.perf_counter())
            done += 1
            if done == steps:
                break
    return (len(times) - warmup - 1) * args.batch / (times[-1] - times[warmup])


def lightdist_training(folder: Path, args, steps: int, warmup: int) -> float:
    t = step_times(["+experiment=imagefolder_resnet50", f"data.path={folder}", "strategy=auto",
                    f"data.batch_size={args.batch}", f"data.num_workers={args.workers}",
                    "data.mixup_alpha=0", "data.cutmix_alpha=0", "data.auto_augment=null",
                    "data.random_erasing=0", "data.val_size=0.05", "data.test_size=0.05",
                    "trainer.limit_val_batches=0", "test_after_fit=false",
                    "trainer.enable_progress_bar=false", "logger=none"], steps, sync_cuda=True)
    return (len(t) - warmup - 1) * args.batch / (t[-1] - t[warmup])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="reuse (or write) the JPEGs here instead of a tmp dir")
    parser.add_argument("--gpu", action="store_true", help="also timm ResNet-50 bf16 training images/s on one GPU")
    parser.add_argument("--steps", type=int, default=120, help="--gpu: training steps per side (first 20 not timed)")
    parser.add_argument("--name", default=None, help="result file bench/results/<name>.json")
    args = parser.parse_args()
    torch.set_num_threads(1)  # this process only iterates; the workers decode (each one thread)

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.dir or Path(tmp) / "jpegs"
        if not folder.is_dir() or not any(folder.rglob("*.jpg")):
            t = time.perf_counter()
            write_jpegs(folder, args.images)
            print(f"wrote {args.images} JPEGs to {folder} in {time.perf_counter() - t:.1f} s")
        result = {"images": args.images, "jpeg_side_px": [256, 500], "image_size": args.size, "batch_size": args.batch,
                  "workers": args.workers, "repeats": args.repeats, "loader": loaders(folder, args)}
        if args.gpu:
            torch.set_num_threads(4)
            warmup = 20
            plain = plain_training(folder, args, args.steps, warmup)
            light = lightdist_training(folder, args, args.steps, warmup)
            print(f"training (timm resnet50, bf16): plain loop {plain:.1f} images/s, lightdist {light:.1f} images/s, "
                  f"ratio {light / plain:.2f}x")
            result["training_gpu"] = {"model": "timm resnet50", "precision": "bf16", "steps": args.steps,
                                      "warmup": warmup, "plain_images_per_s": round(plain, 1),
                                      "lightdist_images_per_s": round(light, 1), "ratio": round(light / plain, 3),
                                      "gpu": torch.cuda.get_device_name()}
    path = write_result(args.name or ("image_loader_gpu" if args.gpu else "image_loader_cpu"), result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

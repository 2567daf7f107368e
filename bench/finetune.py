"""Fine-tuning against training from scratch with few labels, on real Fashion-MNIST images.

The source run learns classes 0-4 (T-shirt/top, Trouser, Pullover, Dress, Coat); the target
task is the other five classes (Sandal, Shirt, Sneaker, Bag, Ankle boot), relabelled 0-4,
with `--labels` training images. Both splits are written as MNIST-layout IDX files, so the
target runs are `+experiment=mnist_finetune_from_fashion` exactly as a user would start it,
and the scratch baseline is the same recipe without a source run. Test accuracy is on all
5,000 test images of the five target classes.

    python bench/finetune.py [--labels 1000] [--source-images 6000] [--epochs 5]
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DATA, write_result  # noqa: E402
from lightdist.vision import idx  # noqa: E402
from lightdist.vision.idx import write_idx  # noqa: E402

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=csv"]


def write_split(root: Path, classes: list[int], n_train: int | None, seed: int = 0) -> None:
    train_x, train_y = idx.read_split(DATA / "fashion-mnist", "train")
    test_x, test_y = idx.read_split(DATA / "fashion-mnist", "t10k")
    rng = np.random.default_rng(seed)
    folder = root / "mnist"
    folder.mkdir(parents=True)
    for split, x, y, n in (("train", train_x, train_y, n_train), ("t10k", test_x, test_y, None)):
        keep = np.flatnonzero(np.isin(y, classes))
        if n is not None:
            keep = rng.choice(keep, n, replace=False)
        remap = {c: i for i, c in enumerate(classes)}
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", x[keep].reshape(-1, 28, 28))
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", np.array([remap[int(v)] for v in y[keep]]))


def cli(args: list[str], cwd: Path) -> dict:
    subprocess.run([sys.executable, "-m", "lightdist", *args, *QUIET], cwd=cwd, check=True, capture_output=True)
    (summary,) = sorted(cwd.glob("outputs/*/*/summary.json"), key=lambda p: p.stat().st_mtime)[-1:]
    return json.loads(summary.read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--labels", type=int, default=1000)
    parser.add_argument("--source-images", type=int, default=6000)
    parser.add_argument("--source-epochs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lightdist-finetune-"))
    write_split(work / "source", [0, 1, 2, 3, 4], args.source_images)
    write_split(work / "target", [5, 6, 7, 8, 9], args.labels + 200)
    common = ["data.val_size=200", "data.test_subset=null"]
    source = cli(["+experiment=fashion_mnist_resnet", "data=mnist", f"data.root={work / 'source'}", *common,
                  f"trainer.max_epochs={args.source_epochs}", "name=source"], work)
    target = ["+experiment=mnist_finetune_from_fashion", f"data.root={work / 'target'}", *common,
              f"trainer.max_epochs={args.epochs}"]
    tuned = cli([*target, f"transfer.init_from={source['run_dir']}", "name=finetuned"], work)
    scratch = cli([*target, "transfer.init_from=null", "transfer.freeze_backbone_epochs=0", "transfer.backbone_lr_factor=1.0",
                   "name=scratch"], work)
    result = {
        "setup": {"source": f"Fashion-MNIST classes 0-4, {args.source_images} images, {args.source_epochs} epochs",
                  "target": f"Fashion-MNIST classes 5-9 relabelled 0-4, {args.labels} training images "
                            f"(+200 validation), {args.epochs} epochs, test: all 5,000 test images of those classes",
                  "model": "ResNet-20 (recipe: +experiment=mnist_finetune_from_fashion)"},
        "source_test_acc": source["test"].get("test/acc"),
        "finetuned_test_acc": tuned["test"].get("test/acc"),
        "scratch_test_acc": scratch["test"].get("test/acc"),
        "finetuned_wall_s": tuned["wall_time_s"], "scratch_wall_s": scratch["wall_time_s"],
    }
    print(json.dumps(result, indent=2))
    print(write_result("finetune", result))


if __name__ == "__main__":
    main()

"""Where the real datasets are, the marks of tests that need them, and the generated stand-ins.

Only tests that assert what real data alone shows (an accuracy floor, the real dataset's size,
statistics or files) read the real data; every other test runs on small generated datasets in
the same canonical layouts, so that the suite runs on a clean clone without ../shared/data.
"""

import os
from pathlib import Path

import pytest

from tests.helpers.cli import REPO
from tests.helpers.image_files import write_fashion_mnist
from tests.helpers.text_files import write_bbc_news

# Read once, before the test session points LIGHTDIST_DATA at the generated data.
SHARED_DATA = Path(os.environ.get("LIGHTDIST_DATA") or REPO.parent / "shared" / "data").resolve()

needs_fashion_mnist = pytest.mark.skipif(
    not (SHARED_DATA / "fashion-mnist" / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"real Fashion-MNIST not found under {SHARED_DATA} (set LIGHTDIST_DATA)")
needs_bbc = pytest.mark.skipif(not (SHARED_DATA / "bbc-news").is_dir(),
                               reason=f"real BBC News not found under {SHARED_DATA} (set LIGHTDIST_DATA)")


def write_generated_data(root: Path) -> Path:
    """root/fashion-mnist/ and root/bbc-news/: what the configs find under $LIGHTDIST_DATA."""
    write_fashion_mnist(root)
    write_bbc_news(root)
    return root

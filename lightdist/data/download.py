"""Find a dataset's canonical files under a data root, or download them (checksummed) when online."""

import contextlib
import hashlib
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lightdist.errors import DataError


@dataclass(frozen=True)
class RemoteFile:
    name: str
    url: str
    md5: str


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(remote: RemoteFile, target: Path, timeout: float = 30.0) -> None:
    """Download to a temporary file, check the md5, then move into place (never a half file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False, suffix=".part") as tmp:
        tmp_path = Path(tmp.name)
        try:
            with urllib.request.urlopen(remote.url, timeout=timeout) as response:
                shutil.copyfileobj(response, tmp)
        except (urllib.error.URLError, OSError) as exc:
            tmp_path.unlink(missing_ok=True)
            raise OSError(f"{remote.url}: {exc}") from exc
    actual = md5sum(tmp_path)
    if actual != remote.md5:
        tmp_path.unlink(missing_ok=True)
        raise OSError(f"{remote.url}: checksum mismatch (md5 {actual}, expected {remote.md5})")
    tmp_path.replace(target)


def fetch_files(remote: tuple[RemoteFile, ...], after_download=None) -> Callable[[Path], None]:
    """A `fetch` for locate(): download each remote file missing from the folder (md5-checked), then
    `after_download(folder)` (e.g. untar)."""
    def fetch(target: Path) -> None:
        for item in remote:
            if not (target / item.name).is_file():
                download(item, target / item.name)
        if after_download is not None:
            after_download(target)

    return fetch


def locate(
    root: str | Path,
    folders: tuple[str, ...],
    required: tuple[str, ...],
    dataset: str,
    allow_download: bool,
    fetch: Callable[[Path], None],
    present: Callable[[Path], bool] | None = None,
    download_key: str = "data.download",
) -> Path:
    """The first of `root/<folder>` (or `root` itself) holding the dataset; else `fetch(first folder)` downloads it.

    `root` may be the data folder (holding `<folder>/`) or the dataset's own folder. A folder holds the
    dataset when `present(folder)` (by default: every required file is there). A failed download leaves
    nothing behind: folders created for it are removed again. `download_key` is the config key that
    switches downloads, for the error message.
    """
    root = Path(root).expanduser()
    if present is None:
        def present(folder: Path) -> bool:
            return all((folder / name).is_file() for name in required)
    for folder in (*folders, ""):
        if present(root / folder):
            return root / folder
    target = root / folders[0]
    why = f"downloads are off ({download_key}=false)"
    if allow_download:
        created = [p for p in (target, *target.parents) if not p.exists()]
        try:
            fetch(target)
            if present(target):
                return target
            why = "the download did not contain the expected files"
        except (OSError, RuntimeError, ValueError) as exc:  # torchvision raises URLError (an OSError) or RuntimeError
            why = f"it could not be downloaded ({' '.join(str(exc).split())})"
        for folder in created:  # innermost first; a folder that got files (a checked download) stays
            with contextlib.suppress(OSError):
                folder.rmdir()
    raise DataError(
        f"{dataset} not found under {root} and {why}",
        hint=f"put {', '.join(required)} in {target}, or point data.root / $LIGHTDIST_DATA at a folder "
        f"holding {folders[0]}/ (or at that folder itself)",
    )

"""Writing rendered frames (H x W x 3 uint8) to a GIF or MP4 with imageio."""

from pathlib import Path

import numpy as np

from lightdist.errors import ConfigError


def check_video_format(video_format: str) -> None:
    """Fail before training, not at its end, when the format cannot be written here."""
    if video_format == "mp4":
        try:
            import imageio_ffmpeg  # noqa: F401
        except ImportError as exc:
            raise ConfigError("MP4 recording needs imageio-ffmpeg",
                              hint='pip install "lightdist[mp4]", or data.video_format=gif') from exc


def save_video(frames: list[np.ndarray], path: Path, fps: float = 30) -> Path:
    import imageio.v3 as iio

    if not frames:
        raise ValueError("no frames to save")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gif":
        # GIF frame durations are in milliseconds; loop=0 repeats forever.
        iio.imwrite(path, np.stack(frames), duration=1000 / fps, loop=0)
    else:
        check_video_format("mp4")
        iio.imwrite(path, np.stack(frames), fps=fps, codec="libx264", macro_block_size=1)
    return path

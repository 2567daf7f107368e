"""Config composition support: resolvers, the root schema and validation of what users typed."""

from pathlib import Path


def config_dir() -> str:
    """conf/ ships inside the wheel as lightdist/conf; in a source checkout it sits beside the package."""
    package_root = Path(__file__).resolve().parents[1]
    packaged = package_root / "conf"
    if (packaged / "config.yaml").is_file():
        return str(packaged)
    return str(package_root.parent / "conf")

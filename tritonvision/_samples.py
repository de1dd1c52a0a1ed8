"""Real photos that installed packages ship (matplotlib, scikit-image): demo and test data.

Located on disk without importing the packages (importing matplotlib costs ~1 s).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["SAMPLE_PHOTOS", "sample_photo_paths"]

# (package, path inside the package): colour photographs of real scenes.
SAMPLE_PHOTOS: tuple[tuple[str, str], ...] = (
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    ("skimage", "data/astronaut.png"),
    ("skimage", "data/chelsea.png"),
    ("skimage", "data/coffee.png"),
    ("skimage", "data/rocket.jpg"),
    ("skimage", "data/motorcycle_left.png"),
)


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def sample_photo_paths() -> list[Path]:
    """Paths of the shipped sample photos that exist here (possibly empty)."""
    found = []
    for package, relative in SAMPLE_PHOTOS:
        root = _package_dir(package)
        if root is not None and (root / relative).is_file():
            found.append(root / relative)
    return found

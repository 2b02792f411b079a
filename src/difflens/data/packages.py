"""The PyPI packages that carry difflens' embedded data (Wikipedia paragraphs, chat corpora)."""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from ..files import installed_package_dir


def data_package_dir(pkg: str) -> Path:
    """Directory of an embedded-data package; a clear error when it is not installed."""
    path = installed_package_dir(pkg)
    if path is None:
        raise DataError(f"the data package '{pkg}' is not installed; run `make install`.")
    return path

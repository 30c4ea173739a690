"""Fetch data files from Debian packages without installing them.

``apt-get download`` fetches a ``.deb`` into a cache folder (no root needed once the
package lists exist) and ``dpkg-deb -x`` unpacks it beside; nothing touches the system.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from lapsv.errors import LapsvError


class PackageError(LapsvError, RuntimeError):
    """A Debian package could not be downloaded or unpacked."""


def unpacked_package(name: str, cache: str | Path) -> Path:
    """Download and unpack Debian package ``name`` under ``cache``; return its file tree.

    The result is cached: a second call returns ``cache/name`` at once.
    """
    cache = Path(cache)
    target = cache / name
    done = target / ".unpacked"
    if done.exists():
        return target
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise PackageError(f"'{tool}' not found: building data from Debian packages needs apt")
    downloads = cache / "debs"
    downloads.mkdir(parents=True, exist_ok=True)
    deb = _download(name, downloads)
    tmp = cache / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    _run(["dpkg-deb", "-x", str(deb), str(tmp)], f"unpacking {deb.name}")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    done.touch()
    return target


def _download(name: str, folder: Path) -> Path:
    existing = sorted(folder.glob(f"{name}_*.deb"))
    if existing:
        return existing[-1]
    result = subprocess.run(
        ["apt-get", "download", name], cwd=folder, capture_output=True, text=True, check=False
    )
    if result.returncode != 0 and "Unable to locate package" in result.stderr:
        # the package lists may be missing on a fresh machine: refresh them once
        _run(["apt-get", "update", "-q"], "refreshing the package lists (apt-get update)")
        result = subprocess.run(
            ["apt-get", "download", name], cwd=folder, capture_output=True, text=True, check=False
        )
    found = sorted(folder.glob(f"{name}_*.deb"))
    if result.returncode != 0 or not found:
        raise PackageError(f"apt-get download {name} failed: {result.stderr.strip()[-500:]}")
    return found[-1]


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PackageError(f"{what} failed: {result.stderr.strip()[-500:]}")

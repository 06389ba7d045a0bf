"""Installing a carry (benchmarks.carry) on a machine without network, into a directory of its own.

Runs under the machine's own Python before anything of the project imports: the standard library,
pip and ``packaging`` (the image's, or pip's own copy). A carried wheel is installed only where the
machine's version of that distribution is missing or outside the requirement recorded with it, so
the image's packages stay whenever they will do; the directory then goes first on PYTHONPATH.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

try:
    from packaging.specifiers import SpecifierSet
except ImportError:  # an image without packaging still has pip's
    from pip._vendor.packaging.specifiers import SpecifierSet

MANIFEST = "carry.json"


def this_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def version_on(name: str, path: list[str]) -> str | None:
    """The version of ``name`` an import along ``path`` would find (the first distribution on it)."""
    for distribution in metadata.distributions(name=name, path=path):
        return distribution.version
    return None


def satisfied(version: str | None, requirement: str) -> bool:
    return version is not None and SpecifierSet(requirement).contains(version, prereleases=True)


def install(carry: Path, site: Path, python: str | None = None, *, prefer_carried: bool = False) -> dict:
    """Install what this machine lacks from ``carry`` into ``site``; returns what was decided, wheel by wheel.

    ``prefer_carried``: every carried wheel for this Python, even where the machine's version is in range
    (for a rerun after an image package that met its requirement did not work with the carried ones).
    """
    manifest = json.loads((carry / MANIFEST).read_text())
    python = python or this_python()
    wheels = [wheel for wheel in manifest["wheels"] if wheel["python"] in (None, python)]
    carried_names = {wheel["name"] for wheel in manifest["wheels"]}
    uncovered = sorted(carried_names - {wheel["name"] for wheel in wheels})
    installed, kept = [], []
    for wheel in wheels:
        have = version_on(wheel["name"], sys.path)
        if not prefer_carried and satisfied(have, wheel["requirement"]):
            kept.append(f"{wheel['name']} {have}")
        else:
            installed.append(wheel)
    if installed:
        site.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile"]
        command += ["--disable-pip-version-check", "--no-cache-dir", "--upgrade", "--target", str(site)]
        subprocess.run([*command, *(str(carry / wheel["file"]) for wheel in installed)], check=True)
    return {
        "python": python,
        "site": str(site),
        "installed": [f"{wheel['name']} {wheel['version']}" for wheel in installed],
        "kept_from_image": kept,
        "no_wheel_for_this_python": uncovered,
        "skipped_by_carry": manifest.get("skipped", []),
    }


def problems(carry: Path | None, site: Path | None) -> list[str]:
    """Each needed distribution that an import would not find at a version that will do (empty: all good)."""
    if carry is None:
        return []
    manifest = json.loads((carry / MANIFEST).read_text())
    path = [str(site), *sys.path] if site is not None else sys.path
    needs = {need["name"]: need["requirement"] for need in (*manifest["checked"], *manifest["wheels"])}
    found = []
    for name, requirement in sorted(needs.items()):
        version = version_on(name, path)
        if not satisfied(version, requirement):
            found.append(f"{name} {version or 'missing'}, needs {requirement or 'any version'}")
    return found

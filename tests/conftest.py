"""Fixtures shared by every tier. The control plane fixtures live in tests/e2e/conftest.py."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# hack/ holds the test control plane (localcluster) and the local node agent; tests/ holds the catalog.
for path in (REPO / "hack", REPO / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

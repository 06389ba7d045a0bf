"""Fixtures of the packaging tests: helm and kubeconform from the binary cache, and offline schemas."""

from __future__ import annotations

import pytest
from chartkit import Tools, kubernetes_openapi


@pytest.fixture(scope="session")
def tools() -> Tools:
    return Tools()


@pytest.fixture(scope="session")
def openapi() -> dict:
    return kubernetes_openapi()

"""Shared test fixtures: oracle tools, the shared sample images, temporary images."""

from __future__ import annotations

import bz2
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from emu.pytest_plugin import skip_or_fail

ROOT = Path(__file__).resolve().parent.parent
SHARED_FIXTURES = ROOT.parent / "shared" / "fixtures"
IN_CI = os.environ.get("CI") == "true"


def need_tool(name: str) -> str:
    """Path of an oracle tool; skip when absent, but fail under CI=true."""
    path = shutil.which(name)
    if path is None:
        skip_or_fail(f"oracle tool {name!r} is not installed (.ci/run installs it)")
    return path


@pytest.fixture
def tool() -> Callable[[str], str]:
    return need_tool


@pytest.fixture(scope="session")
def shared_fixtures() -> Path:
    if not SHARED_FIXTURES.is_dir():
        if IN_CI:
            pytest.fail(f"{SHARED_FIXTURES} is missing under CI")
        pytest.skip("../shared/fixtures is not beside this clone")
    return SHARED_FIXTURES


@pytest.fixture
def sample(shared_fixtures: Path, tmp_path: Path) -> Callable[[str], Path]:
    """Decompress ``../shared/fixtures/NAME.bz2`` into tmp_path; returns the path."""
    def unpack(name: str) -> Path:
        source = shared_fixtures / f"{name}.bz2"
        target = tmp_path / name
        with bz2.open(source, "rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        return target
    return unpack

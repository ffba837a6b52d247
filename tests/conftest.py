"""Shared test fixtures: oracle tools, the shared sample images, temporary images."""

from __future__ import annotations

import bz2
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Verbosity, settings

from emu.pytest_plugin import skip_or_fail

ROOT = Path(__file__).resolve().parent.parent
SHARED_FIXTURES = ROOT.parent / "shared" / "fixtures"
IN_CI = os.environ.get("CI") == "true"

# Hypothesis profiles.  "ci" (chosen under CI=true) is derandomized: every run tries the
# same examples, so CI is green or red for the code, not for the seed.  "long" is the
# randomized soak (README: HYPOTHESIS_PROFILE=long): LONG_FACTOR times each test's
# examples.  Both keep a failure's report short (no reproduction blob, one bug shown).
LONG_FACTOR = 20
settings.register_profile("ci", derandomize=True, database=None, print_blob=False,
                          report_multiple_bugs=False, verbosity=Verbosity.normal)
settings.register_profile("long", derandomize=False, print_blob=False,
                          report_multiple_bugs=False,
                          suppress_health_check=[HealthCheck.too_slow])
PROFILE = os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if IN_CI else None)
if PROFILE:
    settings.load_profile(PROFILE)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under the "long" profile, multiply every property test's own max_examples."""
    if PROFILE != "long":
        return
    done: set[int] = set()   # parametrized items share one function: scale it once
    for item in items:
        test = getattr(item, "obj", None)
        own = getattr(test, "_hypothesis_internal_use_settings", None)
        if own is not None and id(test) not in done:
            done.add(id(test))
            test._hypothesis_internal_use_settings = settings(  # type: ignore[union-attr]
                own, max_examples=own.max_examples * LONG_FACTOR)


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

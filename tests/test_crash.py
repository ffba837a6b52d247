"""No acknowledged byte lost: every format and child type under three crash models.

The harness (``tests/crashmodel.py``) records a workload's writes and fsyncs, then
replays crash states into a scratch folder and checks each with emu and, where QEMU
reads the format, with ``qemu-img check`` and ``qemu-img convert`` as oracles.  This
file runs a bounded deterministic slice (every prefix cut, two sector tears per
write, a seeded sample of reorderings; QEMU on every eighth state).  The exhaustive
run is a separate command: ``.venv/bin/python tests/crashmodel.py --full``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from crashmodel import MODELS, VARIANTS, VARIANTS_BY_NAME, Variant, run_variant

from disks.vdi import VdiImage

QEMU_EVERY = 8


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_every_crash_state_keeps_flushed_data(variant: Variant, tmp_path: Path,
                                              tool: Callable[[str], str]) -> None:
    if variant.qemu_format is not None:
        tool("qemu-img")
    results = run_variant(variant, tmp_path, qemu_every=QEMU_EVERY)
    failures = [failure for _, found in results.values() for failure in found]
    assert not failures, "\n".join(failures[:8])
    assert set(results) == set(MODELS)
    assert results["prefix"][0] > 10 and results["torn"][0] > 0


def test_a_driver_without_its_barrier_is_caught(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The reorder model finds the loss when VDI publishes map entries with no fsync
    before them (the harness can fail)."""
    publish = VdiImage._publish_entries

    def without_barrier(self: VdiImage) -> None:
        self.file.sync = lambda: None  # type: ignore[method-assign]
        try:
            publish(self)
        finally:
            del self.file.sync

    monkeypatch.setattr(VdiImage, "_publish_entries", without_barrier)
    results = run_variant(VARIANTS_BY_NAME["vdi-child"], tmp_path, models=("reorder",),
                          qemu=False)
    tried, failures = results["reorder"]
    assert failures and len(failures) < tried
    assert any("reads neither" in failure or "runs past" in failure for failure in failures)

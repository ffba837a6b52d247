"""Disk fault injection at the ATA level: error registers, partial transfers, busy time,
power cuts, host-error policies and the I/O log, driven by plain port accesses.

What a drive reports follows ATA/ATAPI-6: ERR (DF too for a write fault) with UNC,
IDNF or ABRT in the error register, the LBA of the first failing sector in the task
file, the sectors before it transferred (whole DRQ blocks), INTRQ as usual.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_ata import (
    CONTROL,
    COUNT,
    DATA,
    DEV0,
    DEV1,
    DEVICE,
    LBA,
    LBA_HIGH,
    LBA_LOW,
    LBA_MID,
    SECTOR,
    Host,
    attach,
    file_bytes,
    make_disk,
    pattern,
)
from test_busmaster import ACTIVE, INTERRUPT, Rig

import disks
from devices.ata import (
    BSY,
    DF,
    DRDY,
    DRQ,
    DSC,
    ERR,
    ERROR_ABRT,
    ERROR_IDNF,
    ERROR_UNC,
    STATUS_READY,
    AtaDrive,
    AtapiDrive,
)
from devices.faults import FaultPlan, FaultPlanError, load_plan, plan_from_mapping
from devices.interfaces import BytearrayMemory

HOB = 0x80


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[disks.Image]:
    image = make_disk(tmp_path / "disk.raw")
    yield image
    image.close()


def faults_of(host: Host) -> FaultPlan:
    drive = host.channel.units[0].drive
    assert isinstance(drive, AtaDrive)
    return drive.faults


def task_lba28(host: Host) -> int:
    return host.inb(LBA_HIGH) << 16 | host.inb(LBA_MID) << 8 | host.inb(LBA_LOW)


def read_until_error(host: Host) -> tuple[bytes, int]:
    """Read DRQ blocks of one sector while DRQ is set; (data, final status)."""
    data = b""
    status = host.status()
    while status & DRQ and not status & ERR:
        data += host.insw(SECTOR // 2)
        status = host.status()
    return data, status


class Clock:
    def __init__(self) -> None:
        self.ns = 0

    def now_ns(self) -> int:
        return self.ns


# --- PIO -----------------------------------------------------------------------------

def test_pio_read_stops_at_the_unreadable_sector(disk: disks.Image) -> None:
    host = attach(disk)
    faults_of(host).unreadable(13)
    host.command(0x20, count=8, lba=10)
    data, status = read_until_error(host)
    assert data == pattern(10, 3)                       # 10, 11, 12 reached the host
    assert status == DRDY | ERR and host.error() == ERROR_UNC
    assert task_lba28(host) == 13
    assert host.irq.raised == 4                         # INTRQ: three blocks, the error


def test_read_multiple_transfers_only_whole_blocks_before_the_error(disk: disks.Image) -> None:
    host = attach(disk)
    faults_of(host).unreadable(15)
    host.command(0xC6, count=4)                         # SET MULTIPLE 4
    host.status()
    host.command(0xC4, count=8, lba=10)
    data = b""
    status = host.status()
    while status & DRQ:
        data += host.insw(4 * SECTOR // 2)
        status = host.status()
    assert data == pattern(10, 4)                       # block 10-13; 14-17 holds 15
    assert status & ERR and host.error() == ERROR_UNC and task_lba28(host) == 15


def test_first_sector_bad_fails_at_once_without_data(disk: disks.Image) -> None:
    host = attach(disk)
    faults_of(host).missing(10, 4)
    host.command(0x20, count=2, lba=9)
    assert host.insw(SECTOR // 2) == pattern(9)
    assert host.status() == DRDY | ERR and host.error() == ERROR_IDNF
    assert task_lba28(host) == 10


def test_chs_command_gets_the_bad_sector_in_chs_form(disk: disks.Image) -> None:
    host = attach(disk)
    drive = host.channel.units[0].drive
    assert isinstance(drive, AtaDrive) and drive.translation is not None
    spt = drive.translation.sectors
    bad = spt + 2                                       # cylinder 0, head 1, sector 3
    faults_of(host).unreadable(bad)
    host.chs_command(0x20, cylinder=0, head=1, sector=1, count=4)
    data, status = read_until_error(host)
    assert data == pattern(spt, 2) and status & ERR and host.error() == ERROR_UNC
    assert host.inb(LBA_LOW) == 3 and host.inb(DEVICE) & 0x0F == 1
    assert host.inb(LBA_MID) == host.inb(LBA_HIGH) == 0


def test_lba48_error_address_in_the_high_order_bytes(tmp_path: Path) -> None:
    with disks.create(tmp_path / "big.raw", "raw", 130 << 30) as image:
        host = attach(image)
        bad = (1 << 28) + 0x123456
        faults_of(host).unreadable(bad)
        host.command48(0x24, count=4, lba=bad - 1)
        data, status = read_until_error(host)
        assert len(data) == SECTOR and status & ERR and host.error() == ERROR_UNC
        low = [host.inb(port) for port in (LBA_LOW, LBA_MID, LBA_HIGH)]
        host.outb(CONTROL, HOB)
        high = [host.inb(port) for port in (LBA_LOW, LBA_MID, LBA_HIGH)]
        host.outb(CONTROL, 0)
        assert sum(v << 8 * i for i, v in enumerate(low + high)) == bad


def test_pio_write_fault_keeps_the_sectors_before_it(disk: disks.Image) -> None:
    host = attach(disk)
    faults_of(host).unwritable(12)
    host.command(0x30, count=4, lba=10)
    new = pattern(10, 4, seed=7)
    status = host.alt_status()
    written = 0
    while status & DRQ and not status & ERR:
        host.outsw(new[written:written + SECTOR])
        written += SECTOR
        status = host.status()
    assert written == 3 * SECTOR                        # the drive took 10, 11, 12
    assert status == DRDY | DF | ERR and host.error() == ERROR_ABRT
    assert task_lba28(host) == 12
    assert file_bytes(disk, 10, 4) == new[:2 * SECTOR] + pattern(12, 2)


def test_transient_error_heals_after_times(disk: disks.Image) -> None:
    host = attach(disk)
    faults_of(host).unreadable(5, times=2)
    outcomes = []
    for _ in range(3):
        host.command(0x20, count=1, lba=5)
        outcomes.append(host.status() & (ERR | DRQ))
        if outcomes[-1] & DRQ:
            assert host.insw(SECTOR // 2) == pattern(5)
    assert outcomes == [ERR, ERR, DRQ]


def test_failing_flush_reports_abrt(disk: disks.Image) -> None:
    host = attach(disk)
    faults_of(host).failing_flush(times=1)
    host.command(0xE7)
    assert host.status() == DRDY | ERR and host.error() == ERROR_ABRT
    host.command(0xEA)
    assert host.status() == STATUS_READY and host.error() == 0


# --- DMA -----------------------------------------------------------------------------

class DirectMemory(BytearrayMemory):
    """Guest RAM the engine may read the image straight into (as the machine's)."""

    def ram_window(self, address: int, length: int) -> memoryview | None:
        return memoryview(self.data)[address:address + length]

    def written(self, address: int, length: int) -> None:
        pass


@pytest.mark.parametrize("direct", [False, True], ids=["copying", "direct"])
def test_dma_read_moves_the_good_sectors_then_fails(disk: disks.Image, direct: bool) -> None:
    rig = Rig(disk)
    if direct:
        rig.memory = DirectMemory(4 << 20)
        rig.busmaster.memory = rig.memory
        rig.busmaster.direct_memory = rig.memory
    faults_of(rig.host).unreadable(14)
    rig.table([(0x10000, 4096)])
    rig.host.command(0xC8, count=8, lba=10)
    rig.start()
    assert rig.status() & (ACTIVE | INTERRUPT) == INTERRUPT
    assert rig.host.status() == DRDY | ERR and rig.host.error() == ERROR_UNC
    assert task_lba28(rig.host) == 14
    assert bytes(rig.memory.data[0x10000:0x10000 + 4 * SECTOR]) == pattern(10, 4)
    assert bytes(rig.memory.data[0x10000 + 4 * SECTOR:0x10000 + 5 * SECTOR]) == bytes(SECTOR)


def test_dma_write_stores_up_to_the_missing_sector(disk: disks.Image) -> None:
    rig = Rig(disk)
    faults_of(rig.host).missing(13)
    new = pattern(10, 8, seed=3)
    rig.memory.write(0x20000, new)
    rig.table([(0x20000, 8 * SECTOR)])
    rig.host.command(0xCA, count=8, lba=10)
    rig.start(to_memory=False)
    assert rig.host.status() == DRDY | ERR and rig.host.error() == ERROR_IDNF
    assert task_lba28(rig.host) == 13
    assert file_bytes(disk, 10, 8) == new[:3 * SECTOR] + pattern(13, 5)


# --- busy time, power cut -------------------------------------------------------------

def test_busy_time_holds_bsy_and_the_interrupt(disk: disks.Image) -> None:
    host = attach(disk)
    clock = Clock()
    host.channel.clock = clock
    faults_of(host).busy(100_000)
    host.command(0x20, count=1, lba=3)
    assert host.alt_status() == BSY and not host.irq.level
    assert host.channel.next_deadline_ns() == 100_000
    clock.ns = 99_999
    host.channel.update()
    assert host.status() == BSY and not host.irq.level
    clock.ns = 100_000
    host.channel.update()                               # the machine's timer service
    assert host.irq.level
    assert host.alt_status() & (BSY | DRQ) == DRQ
    assert host.insw(SECTOR // 2) == pattern(3)


def test_power_cut_after_the_nth_write(disk: disks.Image) -> None:
    host = attach(disk)
    cuts: list[int] = []
    host.channel.power_cut_hook = cuts.append
    faults_of(host).power_cut(after_writes=2)
    for lba in (1, 2, 3):
        host.command(0x30, count=1, lba=lba)
        host.outsw(pattern(lba, seed=9))
    assert cuts == [0]
    assert file_bytes(disk, 1, 3) == pattern(1, seed=9) + pattern(2, seed=9) + pattern(3)
    assert host.status() & BSY                          # the drive is dead
    host.command(0x20, count=1, lba=1)
    assert host.status() & BSY


# --- host errors: rerror / werror ------------------------------------------------------

def full_disk(image: disks.Image, monkeypatch: pytest.MonkeyPatch) -> None:
    def write(offset: int, data: bytes) -> None:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as error:
            raise disks.ImageIOError(image.path, f"write at {offset}: {error.strerror}") \
                from error
    monkeypatch.setattr(image, "write", write)


@pytest.mark.parametrize("policy, status, error, action", [
    ("enospc", BSY | DRDY, 0, "stop"),
    ("stop", BSY | DRDY, 0, "stop"),
    ("report", DRDY | ERR, ERROR_ABRT, "report"),
    ("ignore", STATUS_READY, 0, "ignore"),
])
def test_werror_policy_on_a_full_host_disk(disk: disks.Image, monkeypatch: pytest.MonkeyPatch,
                                           policy: str, status: int, error: int,
                                           action: str) -> None:
    host = attach(disk, werror=policy)
    seen: list[tuple[Any, ...]] = []
    host.channel.host_error_hook = lambda *event: seen.append(event)
    full_disk(disk, monkeypatch)
    host.command(0x30, count=1, lba=4)
    host.outsw(pattern(4, seed=1))
    assert host.alt_status() == status and (host.error() == error or status & BSY)
    assert [(unit, op, lba, event_action) for unit, op, lba, _, event_action in seen] \
        == [(0, "write", 4, action)]


@pytest.mark.parametrize("policy, status, action", [
    ("report", DRDY | ERR, "report"),
    ("ignore", DRDY | DRQ, "ignore"),      # the guest gets a sector of zeros
    ("stop", BSY | DRDY, "stop"),
])
def test_rerror_policy(disk: disks.Image, monkeypatch: pytest.MonkeyPatch, policy: str,
                       status: int, action: str) -> None:
    host = attach(disk, rerror=policy)
    seen: list[tuple[Any, ...]] = []
    host.channel.host_error_hook = lambda *event: seen.append(event)
    def broken(*args: object) -> None:
        raise disks.ImageIOError(disk.path, "simulated EIO")
    monkeypatch.setattr(disk, "read", broken)
    host.command(0x20, count=1, lba=6)
    assert host.alt_status() & ~DSC == status
    if action == "ignore":
        assert host.insw(SECTOR // 2) == bytes(SECTOR)
    assert [(op, lba, event_action) for _, op, lba, _, event_action in seen] \
        == [("read", 6, action)]


def test_atapi_commands_reach_the_log(disk: disks.Image) -> None:
    host = attach(disk)
    host.channel.attach(1, AtapiDrive())
    entries: list[dict[str, Any]] = []
    host.channel.command_hook = lambda unit, entry: entries.append({"unit": unit, **entry})
    host.command(0xA0, device=DEV1, count=0)            # PACKET
    host.outsw(bytes(12))                               # TEST UNIT READY
    assert [(e["unit"], e["opcode"], e["packet"], e["result"]) for e in entries] \
        == [(1, 0xA0, "00" * 12, "error")]


def test_rerror_report_is_unc_and_enospc_policy_reports_other_errors(
        disk: disks.Image, monkeypatch: pytest.MonkeyPatch) -> None:
    host = attach(disk)                                  # rerror=report, werror=enospc
    def broken(*args: object) -> None:
        raise disks.ImageIOError(disk.path, "simulated EIO")
    monkeypatch.setattr(disk, "read", broken)
    monkeypatch.setattr(disk, "write", broken)
    host.command(0x20, count=1, lba=4)
    assert host.status() == DRDY | ERR and host.error() == ERROR_UNC
    host.command(0x30, count=1, lba=4)
    host.outsw(pattern(4))
    assert host.status() == DRDY | ERR and host.error() == ERROR_ABRT


# --- the I/O log ---------------------------------------------------------------------

def test_command_hook_sees_each_command_once_with_its_outcome(disk: disks.Image) -> None:
    host = attach(disk)
    entries: list[dict[str, Any]] = []
    host.channel.command_hook = lambda unit, entry: entries.append(entry)
    faults_of(host).unreadable(7)
    host.command(0x20, count=2, lba=2)
    host.insw(SECTOR)
    host.command(0x20, count=4, lba=5)
    read_until_error(host)
    host.command(0xE7)
    assert [(e["opcode"], e["lba"], e["count"], e["result"]) for e in entries] == [
        (0x20, 2, 2, "ok"), (0x20, 5, 4, "error"), (0xE7, None, None, "ok")]
    assert entries[1]["error"] == ERROR_UNC and entries[1]["error_lba"] == 7
    json.dumps(entries)                                  # JSON-ready as they are
    assert DATA and COUNT and DEV0 and LBA               # (the register names above)


# --- plan files -------------------------------------------------------------------------

def test_plan_files_in_json_and_toml(tmp_path: Path) -> None:
    (tmp_path / "plan.toml").write_text(
        'busy_ns = 5000\nflush = 2\npower_cut_after_writes = 3\n'
        '[[errors]]\nkind = "unc"\nlba = [10, 19]\ntimes = 1\n'
        '[[errors]]\nkind = "write"\nlba = 40\n')
    plan = load_plan(tmp_path / "plan.toml")
    (tmp_path / "plan.json").write_text(json.dumps({
        "busy_ns": 5000, "flush": 2, "power_cut_after_writes": 3,
        "errors": [{"kind": "unc", "lba": [10, 19], "times": 1},
                   {"kind": "write", "lba": 40}]}))
    assert load_plan(tmp_path / "plan.json") == plan
    assert plan.busy_ns == 5000 and plan.flush_failures == 2 and plan.power_cut_after == 3
    assert plan.read_fault(0, 12) is not None and plan.read_fault(0, 12) is None  # times=1
    assert plan.write_fault(39, 4) is not None and plan.read_fault(40, 1) is None


@pytest.mark.parametrize("data, message", [
    ({"errors": [{"kind": "melt", "lba": 1}]}, "errors[0].kind"),
    ({"errors": [{"kind": "unc", "lba": -1}]}, "errors[0].lba"),
    ({"errors": [{"kind": "unc", "lba": [5, 2]}]}, "errors[0].lba"),
    ({"errors": [{"kind": "unc", "lba": 1, "times": 0}]}, "errors[0].times"),
    ({"busy_ns": "slow"}, "busy_ns"),
    ({"power_cut_after_writes": 0}, "power_cut_after_writes"),
    ({"colour": 1}, "unknown setting 'colour'"),
])
def test_bad_plans_name_the_field(data: object, message: str) -> None:
    with pytest.raises(FaultPlanError, match=message.replace("[", r"\[").replace("]", r"\]")):
        plan_from_mapping(data, "plan.toml")


def test_unreadable_plan_file_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("errors = [")
    with pytest.raises(FaultPlanError, match="bad.toml"):
        load_plan(tmp_path / "bad.toml")
    with pytest.raises(FaultPlanError, match="missing.json"):
        load_plan(tmp_path / "missing.json")


# --- any plan, any range: the sectors before the first bad one, then its LBA ----------------

@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=st.integers(0, 200), count=st.integers(1, 40),
       bad=st.lists(st.integers(0, 260), max_size=4), block=st.sampled_from([1, 2, 4, 16]),
       dma=st.booleans())
def test_reads_stop_exactly_at_the_first_bad_sector(disk: disks.Image, first: int, count: int,
                                                     bad: list[int], block: int,
                                                     dma: bool) -> None:
    rig = Rig(disk)
    host = rig.host
    plan = faults_of(host)
    for lba in bad:
        plan.unreadable(lba)
    failing = min((lba for lba in bad if first <= lba < first + count), default=None)
    if dma:
        rig.table([(0x10000, count * SECTOR)])
        host.command(0xC8, count=count, lba=first)
        rig.start()
        delivered = count if failing is None else failing - first
        data = bytes(rig.memory.data[0x10000:0x10000 + delivered * SECTOR])
        status = host.status()
    else:
        host.command(0xC6, count=block)
        host.status()
        host.command(0xC4, count=count, lba=first)
        data = b""
        status = host.status()
        while status & DRQ:
            data += host.insw(min(block, count - len(data) // SECTOR) * SECTOR // 2)
            status = host.status()
        delivered = count if failing is None else (failing - first) // block * block
    assert data == pattern(first, delivered)
    if failing is None:
        assert status & (ERR | DRQ | BSY) == 0
    else:
        assert status == DRDY | ERR and host.error() == ERROR_UNC
        assert task_lba28(host) == failing


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=st.integers(0, 200), count=st.integers(1, 40),
       bad=st.lists(st.integers(0, 260), max_size=4), block=st.sampled_from([1, 2, 4, 16]),
       dma=st.booleans(), seed=st.integers(1, 1 << 30))
def test_writes_store_exactly_the_sectors_before_the_first_bad_one(
        tmp_path_factory: pytest.TempPathFactory, first: int, count: int, bad: list[int],
        block: int, dma: bool, seed: int) -> None:
    with make_disk(tmp_path_factory.mktemp("w") / "disk.raw") as image:
        rig = Rig(image)
        host = rig.host
        for lba in bad:
            faults_of(host).unwritable(lba)
        failing = min((lba for lba in bad if first <= lba < first + count), default=None)
        new = pattern(first, count, seed=seed)
        if dma:
            rig.memory.write(0x10000, new)
            rig.table([(0x10000, count * SECTOR)])
            host.command(0xCA, count=count, lba=first)
            rig.start(to_memory=False)
            status = host.status()
        else:
            host.command(0xC6, count=block)
            host.status()
            host.command(0xC5, count=count, lba=first)
            sent = 0
            status = host.alt_status()
            while status & DRQ and not status & ERR:
                step = min(block, count - sent)
                host.outsw(new[sent * SECTOR:(sent + step) * SECTOR])
                sent += step
                status = host.status()
        stored = count if failing is None else failing - first
        assert file_bytes(image, first, count) == \
            new[:stored * SECTOR] + pattern(first + stored, count - stored)
        if failing is None:
            assert status & (ERR | DRQ | BSY) == 0
        else:
            assert status == DRDY | DF | ERR and host.error() == ERROR_ABRT
            assert task_lba28(host) == failing


def test_dma_write_power_cut_after_the_nth_write(disk: disks.Image) -> None:
    rig = Rig(disk)
    cuts: list[int] = []
    rig.host.channel.power_cut_hook = cuts.append
    faults_of(rig.host).power_cut(after_writes=1)
    rig.memory.write(0x20000, pattern(30, 2, seed=5))
    rig.table([(0x20000, 2 * SECTOR)])
    rig.host.command(0xCA, count=2, lba=30)
    rig.start(to_memory=False)
    assert cuts == [0] and rig.host.status() & BSY
    assert file_bytes(disk, 30, 2) == pattern(30, 2, seed=5)
    rig.host.command(0xCA, count=1, lba=40)                 # nothing answers any more
    assert rig.host.status() & BSY and file_bytes(disk, 40, 1) == pattern(40)


@pytest.mark.parametrize("policy, status, action", [
    ("enospc", BSY | DRDY, "stop"),
    ("report", DRDY | ERR, "report"),
    ("ignore", STATUS_READY, "ignore"),
])
def test_flush_host_error_follows_werror(disk: disks.Image, monkeypatch: pytest.MonkeyPatch,
                                         policy: str, status: int, action: str) -> None:
    host = attach(disk, werror=policy)
    seen: list[tuple[Any, ...]] = []
    host.channel.host_error_hook = lambda *event: seen.append(event)
    def full(*args: object) -> None:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as error:
            raise disks.ImageIOError(disk.path, "fsync: No space left on device") from error
    monkeypatch.setattr(disk, "flush", full)
    host.command(0xE7)
    assert host.alt_status() == status
    assert [(op, event_action) for _, op, _, _, event_action in seen] == [("flush", action)]

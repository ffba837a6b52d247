"""Disk fault injection: what a drive should get wrong, and when (sans-IO).

Theory of operation
-------------------
A :class:`FaultPlan` belongs to one ATA drive (:attr:`devices.ata.AtaDrive.faults`).
The drive consults it once per command, before it touches the image:

* :meth:`FaultPlan.read_fault` / :meth:`FaultPlan.write_fault` answer, for the
  command's sector range, the first sector that fails and how (a
  :class:`MediaError`).  The drive then moves every sector before it (whole DRQ
  blocks), and posts ERR with the error bits and that LBA in the task file, as
  an ATA/ATAPI-6 drive reports an unrecoverable error;
* :meth:`FaultPlan.flush_fault` says whether FLUSH CACHE fails (ABRT);
* :attr:`FaultPlan.busy_ns` is how long every command keeps BSY set (virtual
  time) before its first result shows;
* :meth:`FaultPlan.count_write` counts completed write commands and says when
  the power is cut (after the Nth).  From then on the plan is *powered off*:
  the drive stores nothing more, and the machine stops the run.

Rules are ``(first, last, kind, times)``: ``unc`` fails reads with UNC, ``idnf``
fails reads and writes with IDNF (the sector's ID cannot be found), ``write``
fails writes with a write fault (DF and ERR in the status, ABRT in the error
register: ATA-1 called DF "drive write fault"), ``abrt`` fails reads and writes
with ABRT (what QEMU's IDE reports for any host I/O error).  ``times`` = how many commands
the rule fails before the sector recovers (``None``: forever), which is what a
guest's retry loop needs to be tested.  The first rule matching the lowest LBA
wins.

A plan is built in Python (``drive.faults.unreadable(100)``) or read from a
JSON or TOML file (:func:`load_plan`), whose shape is::

    busy_ns = 200000            # optional: every command
    flush = "fail"              # or a number: the first N flushes fail
    power_cut_after_writes = 3  # optional
    [[errors]]
    kind = "unc"                # unc | idnf | write | abrt
    lba = 100                   # or lba = [100, 120] (inclusive range)
    times = 2                   # optional

This module knows nothing of image formats or ports: it is pure bookkeeping.
Host I/O errors (ENOSPC, EIO from the image) are a separate matter, decided by
the drive's ``rerror``/``werror`` policies (:func:`error_action`).
"""

from __future__ import annotations

import errno
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Error register bits (ATA/ATAPI-6 6.2.2), repeated here so the plan needs no import
# of the channel; devices.ata uses the same values.
ERROR_UNC = 0x40
ERROR_IDNF = 0x10
ERROR_ABRT = 0x04

# kind -> (error register, device fault?, fails reads?, fails writes?)
KINDS: dict[str, tuple[int, bool, bool, bool]] = {
    "unc": (ERROR_UNC, False, True, False),
    "idnf": (ERROR_IDNF, False, True, True),
    "write": (ERROR_ABRT, True, False, True),
    "abrt": (ERROR_ABRT, False, True, True),
}

# werror/rerror policies (QEMU's names) -> what to do with a host I/O error.
POLICIES = ("report", "ignore", "stop", "enospc")
READ_POLICIES = ("report", "ignore", "stop")
DEFAULT_RERROR = "report"
DEFAULT_WERROR = "enospc"          # QEMU's default: pause on a full host disk, else report


class FaultPlanError(ValueError):
    """A fault plan file or value that cannot be used; names the file and the field."""


@dataclass(frozen=True, slots=True)
class MediaError:
    """How a command fails: the first bad sector and what the drive reports for it."""

    lba: int
    error: int             # error register
    device_fault: bool     # DF in the status register too


@dataclass(slots=True)
class FaultRule:
    first: int
    last: int              # inclusive
    kind: str
    times: int | None = None   # failures left; None = permanent


@dataclass
class FaultPlan:
    """What one drive gets wrong; see the module docstring."""

    rules: list[FaultRule] = field(default_factory=list)
    flush_failures: int = 0          # FLUSH CACHE commands still to fail (-1: all)
    busy_ns: int = 0
    power_cut_after: int | None = None
    writes: int = 0                  # write commands completed so far
    powered_off: bool = False

    # --- building ---------------------------------------------------------
    def add(self, kind: str, lba: int, count: int = 1, *, times: int | None = None
            ) -> FaultPlan:
        if kind not in KINDS:
            raise FaultPlanError(f"unknown fault kind {kind!r} (one of {', '.join(KINDS)})")
        if lba < 0 or count < 1 or (times is not None and times < 1):
            raise FaultPlanError(f"bad fault range lba={lba} count={count} times={times}")
        self.rules.append(FaultRule(lba, lba + count - 1, kind, times))
        return self

    def unreadable(self, lba: int, count: int = 1, *, times: int | None = None) -> FaultPlan:
        """Reads of these sectors fail with UNC (``times`` commands, or forever)."""
        return self.add("unc", lba, count, times=times)

    def missing(self, lba: int, count: int = 1, *, times: int | None = None) -> FaultPlan:
        """Reads and writes of these sectors fail with IDNF."""
        return self.add("idnf", lba, count, times=times)

    def unwritable(self, lba: int, count: int = 1, *, times: int | None = None) -> FaultPlan:
        """Writes of these sectors fail with a write fault (DF, ERR, ABRT)."""
        return self.add("write", lba, count, times=times)

    def failing_flush(self, times: int | None = None) -> FaultPlan:
        """FLUSH CACHE fails with ABRT (the first ``times`` flushes, or all)."""
        self.flush_failures = -1 if times is None else times
        return self

    def busy(self, ns: int) -> FaultPlan:
        """Every command keeps BSY set for ``ns`` nanoseconds of virtual time."""
        if ns < 0:
            raise FaultPlanError(f"busy time {ns} is negative")
        self.busy_ns = ns
        return self

    def power_cut(self, after_writes: int) -> FaultPlan:
        """Cut the power once ``after_writes`` write commands have stored their data."""
        if after_writes < 1:
            raise FaultPlanError(f"power cut after {after_writes} writes: must be >= 1")
        self.power_cut_after = after_writes
        return self

    # --- consulted by the drive -------------------------------------------
    def read_fault(self, lba: int, count: int) -> MediaError | None:
        return self._match(lba, count, reads=True) if self.rules else None

    def write_fault(self, lba: int, count: int) -> MediaError | None:
        return self._match(lba, count, reads=False) if self.rules else None

    def _match(self, lba: int, count: int, *, reads: bool) -> MediaError | None:
        last = lba + count - 1
        best: FaultRule | None = None
        for rule in self.rules:
            _, _, on_read, on_write = KINDS[rule.kind]
            if (on_read if reads else on_write) and rule.first <= last and rule.last >= lba \
                    and (best is None or max(rule.first, lba) < max(best.first, lba)):
                best = rule
        if best is None:
            return None
        if best.times is not None:
            best.times -= 1
            if best.times == 0:
                self.rules.remove(best)
        error, device_fault, _, _ = KINDS[best.kind]
        return MediaError(max(best.first, lba), error, device_fault)

    def flush_fault(self) -> bool:
        if not self.flush_failures:
            return False
        if self.flush_failures > 0:
            self.flush_failures -= 1
        return True

    def count_write(self) -> bool:
        """A write command stored its data: True when that cuts the power."""
        self.writes += 1
        if self.power_cut_after is not None and self.writes >= self.power_cut_after:
            self.powered_off = True
        return self.powered_off

    @property
    def active(self) -> bool:
        return bool(self.rules or self.flush_failures or self.busy_ns
                    or self.power_cut_after is not None)


# --- plan files ----------------------------------------------------------------
def load_plan(path: str | Path) -> FaultPlan:
    """A plan from a JSON (``.json``) or TOML (anything else) file."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as error:
        raise FaultPlanError(f"{path}: {error.strerror}") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" \
            else tomllib.loads(text.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise FaultPlanError(f"{path}: not a {'JSON' if path.suffix == '.json' else 'TOML'} "
                             f"fault plan: {error}") from None
    return plan_from_mapping(data, str(path))


def _integer(value: Any, where: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise FaultPlanError(f"{where}: expected an integer >= {minimum}, got {value!r}")
    return value


def plan_from_mapping(data: Any, source: str = "fault plan") -> FaultPlan:
    """Validate a decoded plan; every error names ``source`` and the field."""
    if not isinstance(data, dict):
        raise FaultPlanError(f"{source}: expected a table of settings")
    known = {"errors", "flush", "busy_ns", "power_cut_after_writes"}
    for key in data:
        if key not in known:
            raise FaultPlanError(f"{source}: unknown setting {key!r} "
                                 f"(known: {', '.join(sorted(known))})")
    plan = FaultPlan()
    errors = data.get("errors", [])
    if not isinstance(errors, list):
        raise FaultPlanError(f"{source}: errors: expected a list")
    for index, entry in enumerate(errors):
        where = f"{source}: errors[{index}]"
        if not isinstance(entry, dict):
            raise FaultPlanError(f"{where}: expected a table")
        extra = set(entry) - {"kind", "lba", "times"}
        if extra:
            raise FaultPlanError(f"{where}: unknown key {sorted(extra)[0]!r}")
        kind = entry.get("kind")
        if kind not in KINDS:
            raise FaultPlanError(f"{where}.kind: {kind!r} is not one of {', '.join(KINDS)}")
        lba = entry.get("lba")
        if isinstance(lba, list):
            if len(lba) != 2:
                raise FaultPlanError(f"{where}.lba: a range is [first, last]")
            first = _integer(lba[0], f"{where}.lba")
            last = _integer(lba[1], f"{where}.lba", first)
        else:
            first = last = _integer(lba, f"{where}.lba")
        times = entry.get("times")
        if times is not None:
            times = _integer(times, f"{where}.times", 1)
        plan.add(kind, first, last - first + 1, times=times)
    flush = data.get("flush")
    if flush == "fail":
        plan.failing_flush()
    elif flush is not None:
        plan.failing_flush(_integer(flush, f"{source}: flush", 1))
    if "busy_ns" in data:
        plan.busy(_integer(data["busy_ns"], f"{source}: busy_ns"))
    if "power_cut_after_writes" in data:
        plan.power_cut(_integer(data["power_cut_after_writes"],
                                f"{source}: power_cut_after_writes", 1))
    return plan


# --- host I/O error policies --------------------------------------------------------
def is_enospc(error: BaseException) -> bool:
    """Does a host error (possibly wrapped by the disk layer) mean the host disk is full?"""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def error_action(policy: str, error: BaseException) -> str:
    """QEMU's werror/rerror: "report" (to the guest), "ignore" or "stop" (pause the VM)."""
    if policy == "enospc":
        return "stop" if is_enospc(error) else "report"
    return policy

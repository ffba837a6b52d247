"""The Motorola MC146818 real-time clock and its 128 bytes of CMOS RAM.

Theory of operation
-------------------
Port 0x70 selects a register (bits 6:0; bit 7 is the NMI mask and is only
remembered), port 0x71 reads or writes it.  Registers 0x00-0x09 are the clock
(seconds, alarm seconds, minutes, alarm minutes, hours, alarm hours, weekday,
day, month, year) in BCD or binary and 12/24-hour form as status B selects;
0x0A-0x0D are status A (update in progress, divider, periodic rate), B (SET,
interrupt enables PIE/AIE/UIE, data mode), C (interrupt flags, cleared by
reading) and D (valid RAM).  IRQ 8 is raised while a flag enabled in B is set in
C; reading C drops it.

Time is the machine's deterministic virtual clock added to a start time
(default 2024-01-01 00:00:00, not the host's clock, so runs repeat exactly).
Nothing ticks: the clock registers are computed when read, UIP is set during
the last 244 us of every virtual second, and the machine asks
:meth:`Cmos.next_deadline_ns` for the next periodic or update-ended interrupt.
Writing a clock register moves the start time so the new value reads back.

The rest of the RAM is the BIOS's configuration, laid out as on QEMU's and
Bochs' ``pc`` machines (SeaBIOS reads it; see :class:`CmosLayout` names):
equipment 0x14, base memory 0x15/0x16, extended memory 0x17/0x18 and 0x30/0x31,
memory above 16 MiB in 64 KiB units 0x34/0x35, above 4 GiB 0x5B-0x5D, CPU count
0x5F, hard disk types 0x12 / 0x19 / 0x1A with the per-drive tables at 0x1B and
0x24, BIOS translation bits 0x39, boot order 0x3D/0x38, century 0x32, and the
checksum of 0x10-0x2D at 0x2E/0x2F.
"""

from __future__ import annotations

import calendar
import datetime
from collections.abc import Iterable

from .interfaces import Clock, IrqLine, NullIrq

INDEX_PORT = 0x70
DATA_PORT = 0x71
NMI_DISABLE = 0x80
NS_PER_S = 1_000_000_000
UIP_WINDOW_NS = 244_000
DEFAULT_START = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)


class Reg:
    """CMOS register indexes (names as in SeaBIOS/QEMU)."""

    SECONDS = 0x00
    SECONDS_ALARM = 0x01
    MINUTES = 0x02
    MINUTES_ALARM = 0x03
    HOURS = 0x04
    HOURS_ALARM = 0x05
    WEEKDAY = 0x06
    DAY = 0x07
    MONTH = 0x08
    YEAR = 0x09
    STATUS_A = 0x0A
    STATUS_B = 0x0B
    STATUS_C = 0x0C
    STATUS_D = 0x0D
    SHUTDOWN = 0x0F
    FLOPPY_TYPES = 0x10
    DISK_TYPES = 0x12
    EQUIPMENT = 0x14
    BASE_MEMORY = 0x15          # 2 bytes, KiB
    EXTENDED_MEMORY = 0x17      # 2 bytes, KiB above 1 MiB (max 65535)
    DISK0_EXTENDED_TYPE = 0x19
    DISK1_EXTENDED_TYPE = 0x1A
    DISK0_PARAMETERS = 0x1B     # 9 bytes per drive
    DISK1_PARAMETERS = 0x24
    CHECKSUM = 0x2E             # 2 bytes, big endian, sum of 0x10..0x2D
    EXTENDED_MEMORY_COPY = 0x30
    CENTURY = 0x32
    MEMORY_ABOVE_16M = 0x34     # 2 bytes, 64 KiB units
    BOOT_ORDER_3 = 0x38         # high nibble: third boot device; bit 0: skip floppy check
    TRANSLATION = 0x39          # 2 bits per ATA drive (ata0 master = bits 1:0)
    BOOT_ORDER_12 = 0x3D        # low nibble first, high nibble second
    MEMORY_ABOVE_4G = 0x5B      # 3 bytes, 64 KiB units
    CPU_COUNT_MINUS_1 = 0x5F


STATUS_A_UIP = 0x80
STATUS_A_DEFAULT = 0x26       # 32.768 kHz divider, 1024 Hz periodic rate
STATUS_B_SET = 0x80
STATUS_B_PIE = 0x40
STATUS_B_AIE = 0x20
STATUS_B_UIE = 0x10
STATUS_B_BINARY = 0x04
STATUS_B_24H = 0x02
STATUS_B_DEFAULT = STATUS_B_24H
STATUS_C_IRQF = 0x80
STATUS_C_PF = 0x40
STATUS_C_AF = 0x20
STATUS_C_UF = 0x10
STATUS_D_VALID = 0x80
HOURS_PM = 0x80
CHECKSUM_RANGE = range(0x10, 0x2E)

BOOT_DEVICE_CODES = {"floppy": 1, "disk": 2, "cdrom": 3, "network": 4}
TRANSLATION_CODES = {"none": 0, "lba": 1, "large": 2, "rechs": 3}
DISK_TYPE_USER = 47           # "user defined" type: parameters in the drive table

CLOCK_FIELD_NAMES = {Reg.SECONDS: "second", Reg.MINUTES: "minute", Reg.HOURS: "hour",
                     Reg.DAY: "day", Reg.MONTH: "month"}
CLOCK_REGISTERS = (Reg.SECONDS, Reg.MINUTES, Reg.HOURS, Reg.WEEKDAY, Reg.DAY, Reg.MONTH,
                   Reg.YEAR, Reg.CENTURY)


def to_bcd(value: int) -> int:
    return (value // 10) << 4 | value % 10


def from_bcd(value: int) -> int:
    return (value >> 4) * 10 + (value & 0x0F)


class Cmos:
    """MC146818 RTC + CMOS RAM at ports 0x70/0x71, IRQ 8."""

    def __init__(self, clock: Clock, irq8: IrqLine | None = None,
                 start: datetime.datetime = DEFAULT_START) -> None:
        self.clock = clock
        self.irq8 = irq8 or NullIrq()
        self.ram = bytearray(128)
        self.index = 0
        self.nmi_disabled = False
        self.start_seconds = calendar.timegm(start.utctimetuple())
        self.ram[Reg.STATUS_A] = STATUS_A_DEFAULT
        self.ram[Reg.STATUS_B] = STATUS_B_DEFAULT
        self.ram[Reg.STATUS_D] = STATUS_D_VALID
        self.last_update_ns = clock.now_ns()

    # --- PortDevice --------------------------------------------------------
    def io_ports(self) -> Iterable[tuple[int, int]]:
        return [(INDEX_PORT, 2)]

    def read(self, port: int, size: int) -> int:
        if port == INDEX_PORT:
            return 0xFF
        return self.read_register(self.index)

    def write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        if port == INDEX_PORT:
            self.index = value & 0x7F
            self.nmi_disabled = bool(value & NMI_DISABLE)
        else:
            self.write_register(self.index, value)

    # --- registers ---------------------------------------------------------
    def _now(self) -> datetime.datetime:
        seconds = self.start_seconds + self.clock.now_ns() // NS_PER_S
        return datetime.datetime.fromtimestamp(seconds, datetime.UTC)

    def _encode(self, value: int) -> int:
        return value if self.ram[Reg.STATUS_B] & STATUS_B_BINARY else to_bcd(value)

    def _decode(self, value: int) -> int:
        return value if self.ram[Reg.STATUS_B] & STATUS_B_BINARY else from_bcd(value)

    def _clock_fields(self, now: datetime.datetime) -> dict[int, int]:
        hours = self._encode(now.hour)
        if not self.ram[Reg.STATUS_B] & STATUS_B_24H:
            hours = self._encode((now.hour + 11) % 12 + 1) | (HOURS_PM if now.hour >= 12 else 0)
        return {
            Reg.SECONDS: self._encode(now.second),
            Reg.MINUTES: self._encode(now.minute),
            Reg.HOURS: hours,
            Reg.WEEKDAY: self._encode(now.isoweekday() % 7 + 1),  # 1 = Sunday
            Reg.DAY: self._encode(now.day),
            Reg.MONTH: self._encode(now.month),
            Reg.YEAR: self._encode(now.year % 100),
            Reg.CENTURY: self._encode(now.year // 100),
        }

    def read_register(self, index: int) -> int:
        if index in CLOCK_REGISTERS:
            return self._clock_fields(self._now())[index]
        if index == Reg.STATUS_A:
            in_update = self.clock.now_ns() % NS_PER_S >= NS_PER_S - UIP_WINDOW_NS
            return (self.ram[index] & ~STATUS_A_UIP) | (STATUS_A_UIP if in_update else 0)
        if index == Reg.STATUS_C:
            self.update()
            value = self.ram[index]
            self.ram[index] = 0
            self.irq8.set(False)
            return value
        return self.ram[index]

    def write_register(self, index: int, value: int) -> None:
        if index in CLOCK_REGISTERS:
            self._set_clock_field(index, value)
        elif index == Reg.STATUS_A:
            self.ram[index] = value & ~STATUS_A_UIP
        elif index in (Reg.STATUS_C, Reg.STATUS_D):
            return  # read-only
        else:
            self.ram[index] = value
            if index == Reg.STATUS_B:
                self._update_irq()

    def _set_clock_field(self, index: int, value: int) -> None:
        now = self._now()
        decoded = self._decode(value)
        if index == Reg.HOURS and not self.ram[Reg.STATUS_B] & STATUS_B_24H:
            decoded = self._decode(value & ~HOURS_PM) % 12 + (12 if value & HOURS_PM else 0)
        fields = {"year": now.year, "month": now.month, "day": now.day, "hour": now.hour,
                  "minute": now.minute, "second": now.second}
        if index == Reg.YEAR:
            fields["year"] = now.year // 100 * 100 + decoded
        elif index == Reg.CENTURY:
            fields["year"] = decoded * 100 + now.year % 100
        elif index in CLOCK_FIELD_NAMES:
            fields[CLOCK_FIELD_NAMES[index]] = decoded
        try:
            replaced = datetime.datetime(**fields, tzinfo=datetime.UTC)
        except ValueError:
            return  # an impossible date: keep counting from the old one
        self.start_seconds += int((replaced - now).total_seconds())

    # --- interrupts on the virtual clock ----------------------------------
    def _periodic_ns(self) -> int | None:
        rate = self.ram[Reg.STATUS_A] & 0x0F
        if rate == 0:
            return None
        if rate <= 2:
            rate += 7
        return NS_PER_S * (1 << (rate - 1)) // 32768

    def next_deadline_ns(self) -> int | None:
        status_b = self.ram[Reg.STATUS_B]
        after = self.last_update_ns
        candidates = []
        if status_b & STATUS_B_PIE and (period := self._periodic_ns()):
            candidates.append((after // period + 1) * period)
        if status_b & (STATUS_B_UIE | STATUS_B_AIE) and not status_b & STATUS_B_SET:
            candidates.append((after // NS_PER_S + 1) * NS_PER_S)
        return min(candidates) if candidates else None

    def update(self) -> None:
        """Set the C flags for periodic/update/alarm events since the last update."""
        now = self.clock.now_ns()
        before, self.last_update_ns = self.last_update_ns, now
        flags = 0
        period = self._periodic_ns()
        if period and now // period != before // period:
            flags |= STATUS_C_PF
        if now // NS_PER_S != before // NS_PER_S and not self.ram[Reg.STATUS_B] & STATUS_B_SET:
            flags |= STATUS_C_UF
            if self._alarm_matches():
                flags |= STATUS_C_AF
        self.ram[Reg.STATUS_C] |= flags
        self._update_irq()

    def _alarm_matches(self) -> bool:
        fields = self._clock_fields(self._now())
        for alarm, current in ((Reg.SECONDS_ALARM, Reg.SECONDS), (Reg.MINUTES_ALARM, Reg.MINUTES),
                               (Reg.HOURS_ALARM, Reg.HOURS)):
            wanted = self.ram[alarm]
            if wanted & 0xC0 != 0xC0 and wanted != fields[current]:  # 0xC0-0xFF: don't care
                return False
        return True

    def _update_irq(self) -> None:
        enabled = self.ram[Reg.STATUS_B] & (STATUS_B_PIE | STATUS_B_AIE | STATUS_B_UIE)
        flags = self.ram[Reg.STATUS_C] & (STATUS_C_PF | STATUS_C_AF | STATUS_C_UF)
        active = bool(enabled & flags)  # the enable and flag bits line up (0x40/0x20/0x10)
        if active:
            self.ram[Reg.STATUS_C] |= STATUS_C_IRQF
        self.irq8.set(active)


class CmosLayout:
    """Fills the BIOS configuration bytes of a :class:`Cmos` (QEMU/Bochs layout)."""

    def __init__(self, cmos: Cmos) -> None:
        self.ram = cmos.ram

    def _put16(self, index: int, value: int) -> None:
        self.ram[index] = value & 0xFF
        self.ram[index + 1] = value >> 8 & 0xFF

    def memory(self, ram_bytes: int, base_kib: int = 640) -> None:
        self._put16(Reg.BASE_MEMORY, base_kib)
        extended_kib = min(max(ram_bytes - (1 << 20), 0) // 1024, 0xFFFF)
        self._put16(Reg.EXTENDED_MEMORY, extended_kib)
        self._put16(Reg.EXTENDED_MEMORY_COPY, extended_kib)
        below_4g = min(ram_bytes, 0xE000_0000)  # the PCI hole starts where QEMU puts it
        above_16m = min(max(below_4g - (16 << 20), 0) // 65536, 0xFFFF)
        self._put16(Reg.MEMORY_ABOVE_16M, above_16m)
        above_4g = max(ram_bytes - below_4g, 0) // 65536
        self.ram[Reg.MEMORY_ABOVE_4G:Reg.MEMORY_ABOVE_4G + 3] = above_4g.to_bytes(3, "little")
        self.ram[Reg.CPU_COUNT_MINUS_1] = 0

    def equipment(self, floppies: int = 0, fpu: bool = True, ps2_mouse: bool = True) -> None:
        value = (0x02 if fpu else 0) | (0x04 if ps2_mouse else 0)
        if floppies:
            value |= 0x01 | (floppies - 1) << 6
        self.ram[Reg.EQUIPMENT] = value  # video bits 5:4 = 00: EGA/VGA with its own BIOS

    def disk(self, index: int, cylinders: int, heads: int, sectors: int,
             translation: str | int) -> None:
        """Describe ATA drive ``index`` (0..3: ata0 master/slave, ata1 master/slave).

        ``translation`` is a name of :data:`TRANSLATION_CODES` or the 2-bit code itself
        (3 = revised ECHS).
        """
        shift = index * 2
        code = TRANSLATION_CODES[translation] if isinstance(translation, str) else translation
        self.ram[Reg.TRANSLATION] = (self.ram[Reg.TRANSLATION] & ~(3 << shift)
                                     | (code & 3) << shift) & 0xFF
        if index > 1:
            return  # only the first controller's drives have type bytes and tables
        nibble_shift = 4 if index == 0 else 0
        self.ram[Reg.DISK_TYPES] |= 0x0F << nibble_shift
        self.ram[Reg.DISK0_EXTENDED_TYPE + index] = DISK_TYPE_USER
        table = Reg.DISK0_PARAMETERS if index == 0 else Reg.DISK1_PARAMETERS
        cylinders = min(cylinders, 0xFFFF)
        self._put16(table + 0, cylinders)
        self.ram[table + 2] = heads
        self._put16(table + 3, 0xFFFF)  # write precompensation: none
        self.ram[table + 5] = 0xC0 | (0x08 if heads > 8 else 0)  # control byte
        self._put16(table + 6, cylinders)  # landing zone
        self.ram[table + 8] = sectors

    def boot_order(self, devices: Iterable[str] = ("disk", "cdrom", "floppy"),
                   floppy_signature_check: bool = False) -> None:
        codes = [BOOT_DEVICE_CODES[name] for name in devices][:3]
        codes += [0] * (3 - len(codes))
        self.ram[Reg.BOOT_ORDER_12] = codes[1] << 4 | codes[0]
        self.ram[Reg.BOOT_ORDER_3] = codes[2] << 4 | (0 if floppy_signature_check else 1)

    def checksum(self) -> None:
        total = sum(self.ram[index] for index in CHECKSUM_RANGE) & 0xFFFF
        self.ram[Reg.CHECKSUM] = total >> 8
        self.ram[Reg.CHECKSUM + 1] = total & 0xFF

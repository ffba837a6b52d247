"""Model-based checking: random reads/writes against an image and a bytearray model."""

from __future__ import annotations

from hypothesis import strategies as st

import disks


def ops(size: int, max_len: int = 3 * 65536) -> st.SearchStrategy[list[tuple[str, int, int, int]]]:
    """Lists of (verb, offset, length, fill byte) with verb 'read', 'write' or 'discard'."""
    def clamp(t: tuple[str, int, int, int]) -> tuple[str, int, int, int]:
        verb, offset, length, fill = t
        offset = min(offset, size - 1)
        return verb, offset, max(1, min(length, size - offset)), fill

    op = st.tuples(st.sampled_from(["read", "write", "write", "discard"]),
                   st.integers(0, size - 1), st.integers(1, max_len), st.integers(1, 255))
    return st.lists(op.map(clamp), min_size=1, max_size=25)


def apply(image: disks.Image, model: bytearray, sequence: list[tuple[str, int, int, int]],
          *, discard: bool = True) -> None:
    """Apply ``sequence`` to both and assert every read agrees with the model."""
    for verb, offset, length, fill in sequence:
        if verb == "write":
            data = bytes([fill]) * length
            image.write(offset, data)
            model[offset:offset + length] = data
        elif verb == "discard" and discard:
            image.discard(offset, length)
            model[offset:offset + length] = bytes(length)
        else:
            assert image.read(offset, length) == bytes(model[offset:offset + length]), \
                f"read {offset}+{length} differs from the model"
    assert image.read(0, image.size) == bytes(model)

"""Lists of strings kept in npz artifacts as two plain arrays: their UTF-8 bytes and offsets.

Results are read with `np.load(allow_pickle=False)`, so text cannot be an object array; a
fixed-width unicode array pads every string to the longest at 4 bytes a character, which for a
test split of long reviews reaches gigabytes. Bytes plus offsets cost the text itself. Torch-free:
the server reads these arrays too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np


def pack_texts(texts: Iterable[str], name: str) -> dict[str, np.ndarray]:
    """`texts` as `{name}_utf8` (uint8, every text's UTF-8 bytes one after another) and
    `{name}_offsets` (int64 [N + 1]: text i is bytes offsets[i]:offsets[i + 1])."""
    encoded = [str(t).encode("utf-8") for t in texts]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return {
        f"{name}_utf8": np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(),
        f"{name}_offsets": offsets,
    }


def unpack_texts(arrays: Mapping[str, np.ndarray], name: str) -> list[str] | None:
    """The texts `pack_texts(texts, name)` stored in `arrays`, in order; None when they hold
    none under that name."""
    if f"{name}_utf8" not in arrays or f"{name}_offsets" not in arrays:
        return None
    data = np.ascontiguousarray(arrays[f"{name}_utf8"], dtype=np.uint8).tobytes()
    bounds = arrays[f"{name}_offsets"].tolist()
    return [data[start:end].decode("utf-8") for start, end in zip(bounds[:-1], bounds[1:],
                                                                   strict=True)]

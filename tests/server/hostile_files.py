"""Hostile upload files, generated small: a deflated torch archive that inflates a hundred
times over, a Parquet file whose one repeated text decodes to gigabytes, a safetensors header
nested 200,000 levels deep, a zip member that holds more than its header declares.

Run as a module (`python -m tests.server.hostile_files DATA_DIR`), it uploads the memory
attacks through the API of a fresh app (`?wait=true`, an ingest lane in the process) and
prints one JSON line per attack: its status, detail and how much the process's peak resident
memory grew (ru_maxrss sees numpy, torch and Arrow allocations that tracemalloc misses).
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import resource
import struct
import sys
import zipfile


def model_folder_zip(config: dict) -> bytes:
    """A zipped Hugging Face model folder: `config` as its config.json and a tiny weights
    file; what the config asks for decides whether it is refused."""
    import torch
    from safetensors.torch import save  # deferred, as torch below: the module runs alone too

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("model/config.json", json.dumps(config))
        zf.writestr("model/model.safetensors", save({"w": torch.zeros(2)}))
    return out.getvalue()


def deflated_torch_archive(nbytes: int) -> bytes:
    """A torch.save-layout archive holding one float32 tensor of `nbytes` zeros, deflated
    (torch.save stores records uncompressed; torch.load inflates deflated ones too)."""
    import torch

    class Storage:
        pass

    storage = Storage()

    class Tensor:
        def __reduce__(self):  # noqa: ANN204
            return (torch._utils._rebuild_tensor_v2,
                    (storage, 0, (nbytes // 4,), (1,), False, collections.OrderedDict()))

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):  # noqa: ANN001, ANN202
            if obj is storage:
                return ("storage", torch.FloatStorage, "0", "cpu", nbytes // 4)
            return None

    data = io.BytesIO()
    Pickler(data, protocol=2).dump({"w": Tensor()})
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("archive/data.pkl", data.getvalue())
        zf.writestr("archive/byteorder", "little")
        with zf.open("archive/data/0", "w", force_zip64=True) as f:
            chunk = bytes(1 << 20)
            for _ in range(nbytes >> 20):
                f.write(chunk)
        zf.writestr("archive/version", "3\n")
    return out.getvalue()


def repeated_text_parquet(rows: int, chars: int) -> bytes:
    """A text dataset whose every row holds the same `chars`-character text: dictionary-
    encoded it is tiny, decoded it is rows × chars bytes (× 4 as NumPy text)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    text = pa.DictionaryArray.from_arrays(pa.array([0] * rows, pa.int32()),
                                          pa.array(["x" * chars]))
    labels = pa.array([0, 1] * (rows // 2), pa.int64())
    out = io.BytesIO()
    # Without the stored Arrow schema a reader gets plain strings, as from any other writer.
    pq.write_table(pa.table({"text": text, "label": labels}), out, store_schema=False)
    return out.getvalue()


def deeply_nested_safetensors(levels: int = 200_000) -> bytes:
    header = b'{"a":' * levels + b"1" + b"}" * levels
    return struct.pack("<Q", len(header)) + header


def lying_zip(member: str, content: bytes, declared: int) -> bytes:
    """A zip whose one deflated member declares `declared` bytes but holds `content`; the
    CRC is that of the declared prefix, so a reader that stops at the declared size sees a
    consistent file."""
    import zlib

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(member, content)
    data = bytearray(out.getvalue())
    crc = zlib.crc32(content[:declared])
    # Local header: CRC at 14, uncompressed size at 22; central directory entry: 16 and 24.
    struct.pack_into("<II", data, 14, crc, 0)
    struct.pack_into("<I", data, 22, declared)
    central = data.rfind(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 16, crc)
    struct.pack_into("<I", data, central + 24, declared)
    return bytes(data)


def _peak_mb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def _attack(data_dir: str) -> None:
    os.environ["PRUNESCOPE_DATA_DIR"] = data_dir
    os.environ["PRUNESCOPE_POLL_SECONDS"] = "0.1"
    from fastapi.testclient import TestClient

    from prunescope.server.config import get_settings
    from prunescope.server.db import upgrade_database
    from prunescope.server.main import create_app
    from tests.ingest_lane import running_ingest_lane

    settings = get_settings()
    upgrade_database(settings)
    torch_file = deflated_torch_archive(256 << 20)
    parquet_file = repeated_text_parquet(1_000_000, 913)
    with running_ingest_lane(settings), TestClient(create_app(settings, dashboard=False)) as c:
        c.params = {"wait": "true"}
        project = c.post("/api/v1/projects", json={"name": "p", "architecture": "mlp"}).json()
        # A small file of each kind first, so loading the readers' libraries is not counted.
        c.post(f"/api/v1/projects/{project['id']}/datasets",
               files={"file": ("warm.parquet", repeated_text_parquet(1000, 10))})
        c.post(f"/api/v1/projects/{project['id']}/checkpoints",
               files={"file": ("warm.pt", deflated_torch_archive(1 << 20))},
               data={"role": "dense"})
        uploads = {
            "torch": ("checkpoints", "w.pt", torch_file, {"role": "dense"}),
            "parquet": ("datasets", "d.parquet", parquet_file, {}),
        }
        for attack, (route, name, content, form) in uploads.items():
            before = _peak_mb()
            r = c.post(f"/api/v1/projects/{project['id']}/{route}",
                       files={"file": (name, content)}, data=form)
            print(json.dumps({"attack": attack, "size": len(content), "status": r.status_code,
                              "detail": r.json().get("detail"),
                              "grew_mb": _peak_mb() - before}), flush=True)


if __name__ == "__main__":
    _attack(sys.argv[1])

"""Random and mutated bytes never crash the checkpoint loader: a state_dict or a CheckpointError."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as safetensors_bytes

from prunescope.models.checkpoints import CheckpointError, load_state_dict_file

_STATE = {"fc.weight": torch.arange(12.0).reshape(3, 4), "fc.bias": torch.ones(3)}
_buffer = io.BytesIO()
torch.save(_STATE, _buffer)
VALID = {"safetensors": safetensors_bytes(_STATE), "torch": _buffer.getvalue()}


def _load(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "upload.bin"
        path.write_bytes(content)
        try:
            state, fmt = load_state_dict_file(path)
        except CheckpointError as exc:
            assert str(exc)  # a message a user can act on
            return
        assert isinstance(state, dict) and fmt
        assert all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())


FUZZ = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(content):
    _load(content)


@FUZZ
@given(st.binary(max_size=64))
def test_random_bytes_behind_real_magic_numbers(tail):
    _load(b"PK\x03\x04" + tail)
    _load(len(tail).to_bytes(8, "little") + tail)  # a safetensors-shaped header length
    _load(b"\x80\x02" + tail)  # a bare pickle


@FUZZ
@given(
    kind=st.sampled_from(sorted(VALID)),
    data=st.data(),
)
def test_mutated_valid_files(kind, data):
    content = bytearray(VALID[kind])
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "truncate", "insert"]))
        at = data.draw(st.integers(0, max(len(content) - 1, 0)))
        if op == "flip" and content:
            content[at] ^= data.draw(st.integers(1, 255))
        elif op == "truncate":
            del content[at:]
        else:
            content[at:at] = data.draw(st.binary(min_size=1, max_size=16))
    _load(bytes(content))

"""Checkpoint loading: formats from content, refusing pickles, and messages that say what to fix."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save as safetensors_bytes

from prunescope.models.checkpoints import (
    CheckpointError,
    load_model,
    load_state_dict_file,
    save_safetensors,
    validate_for_architecture,
)
from prunescope.models.registry import create_model, default_config


class _WritesMarker:
    """Unpickling this runs os.system — the attack a checkpoint upload must not enable."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.clone() for k, v in create_model("mlp").state_dict().items()}


def _write(path, content: bytes):  # noqa: ANN001, ANN202
    path.write_bytes(content)
    return path


def _torch_bytes(obj) -> bytes:  # noqa: ANN001
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_safetensors_round_trip(tmp_path, state):
    save_safetensors(state, tmp_path / "w.safetensors")
    loaded, fmt = load_state_dict_file(tmp_path / "w.safetensors")
    assert fmt == "safetensors"
    _assert_same(loaded, state)


def test_format_comes_from_content_not_file_name(tmp_path, state):
    st = _write(tmp_path / "looks-like.pt", safetensors_bytes(state))
    pt = _write(tmp_path / "looks-like.safetensors", _torch_bytes(state))
    assert load_state_dict_file(st)[1] == "safetensors"
    loaded, fmt = load_state_dict_file(pt)
    assert fmt == "torch_state_dict"
    _assert_same(loaded, state)


def test_a_state_dict_wrapped_under_state_dict_key_is_accepted(tmp_path, state):
    path = _write(tmp_path / "ckpt.pt", _torch_bytes({"state_dict": state, "epoch": 3}))
    _assert_same(load_state_dict_file(path)[0], state)


def test_pickle_with_code_is_refused_without_running_it(tmp_path, state):
    marker = tmp_path / "pwned"
    payload = _torch_bytes({**state, "evil": _WritesMarker(str(marker))})
    with pytest.raises(CheckpointError) as info:
        load_state_dict_file(_write(tmp_path / "exploit.pt", payload))
    assert not marker.exists(), "loading a checkpoint executed code"
    assert "torch.save(model.state_dict()" in str(info.value)
    # The same object pickled the way torch does it would indeed run: the test can fail.
    pickle.loads(pickle.dumps(_WritesMarker(str(marker))))
    assert marker.exists()


def test_bare_pickle_is_refused_unread(tmp_path):
    marker = tmp_path / "pwned"
    raw = pickle.dumps({"fc.weight": _WritesMarker(str(marker))})
    with pytest.raises(CheckpointError, match="pickle"):
        load_state_dict_file(_write(tmp_path / "raw.pkl", raw))
    assert not marker.exists()


def test_whole_pickled_model_is_refused_with_export_advice(tmp_path):
    path = _write(tmp_path / "model.pt", _torch_bytes(create_model("mlp")))
    with pytest.raises(CheckpointError) as info:
        load_state_dict_file(path)
    message = str(info.value)
    assert "state_dict" in message and "safetensors" in message


@pytest.mark.parametrize("cut", [4, 9, 60, 500, -100])
def test_truncated_safetensors_is_refused(tmp_path, state, cut):
    content = safetensors_bytes(state)[:cut]
    with pytest.raises(CheckpointError):
        load_state_dict_file(_write(tmp_path / "cut.safetensors", content))


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.99])
def test_truncated_torch_archive_is_refused(tmp_path, state, fraction):
    content = _torch_bytes(state)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_state_dict_file(_write(tmp_path / "cut.pt", content[: int(len(content) * fraction)]))


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"\x00" * 64])
def test_garbage_is_refused(tmp_path, content):
    with pytest.raises(CheckpointError):
        load_state_dict_file(_write(tmp_path / "junk.bin", content))


@pytest.mark.parametrize(
    ("obj", "word"),
    [
        ([torch.zeros(2)], "list"),
        ({"w": torch.zeros(2), "epoch": 3}, "'epoch'"),
        ({"model": {"w": torch.zeros(2)}}, "'model'"),
        ({}, "empty"),
    ],
)
def test_objects_that_are_not_flat_state_dicts_are_refused(tmp_path, obj, word):
    with pytest.raises(CheckpointError, match=word):
        load_state_dict_file(_write(tmp_path / "odd.pt", _torch_bytes(obj)))


def _validate(state: dict) -> str:
    with pytest.raises(CheckpointError) as info:
        validate_for_architecture(state, "mlp", default_config("mlp"))
    return str(info.value)


def test_a_matching_state_dict_validates(state):
    validate_for_architecture(state, "mlp", default_config("mlp"))


def test_missing_unexpected_and_misshapen_keys_are_named(state):
    broken = dict(state)
    del broken["fc1.0.bias"]
    broken["extra.weight"] = torch.zeros(2)
    broken["fc2.0.weight"] = torch.zeros(3, 3)
    message = _validate(broken)
    assert "missing keys: 1 (fc1.0.bias)" in message
    assert "unexpected keys: 1 (extra.weight)" in message
    assert "fc2.0.weight is (3, 3) but mlp expects (64, 128)" in message


def test_long_key_lists_are_shortened_with_a_count(state):
    message = _validate({f"junk{i}": torch.zeros(1) for i in range(12)})
    assert f"missing keys: {len(state)}" in message
    assert "unexpected keys: 12 (junk0, junk1, junk2, junk3, junk4 and 7 more)" in message
    assert "junk5" not in message


def test_keys_from_torch_prune_get_a_hint(state):
    pruned = {k: v for k, v in state.items() if k != "fc1.0.weight"}
    pruned["fc1.0.weight_orig"] = state["fc1.0.weight"]
    pruned["fc1.0.weight_mask"] = torch.ones_like(state["fc1.0.weight"])
    assert "prune.remove" in _validate(pruned)


def test_dataparallel_prefix_gets_a_hint(state):
    assert "model.module.state_dict()" in _validate({f"module.{k}": v for k, v in state.items()})


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(state, bad):
    state["fc2.0.bias"][3] = bad
    message = _validate(state)
    assert "NaN or Inf" in message and "fc2.0.bias" in message


def test_load_model_gives_the_weights_in_eval_mode(tmp_path, state):
    save_safetensors(state, tmp_path / "w.safetensors")
    model = load_model("mlp", default_config("mlp"), tmp_path / "w.safetensors")
    assert not model.training
    _assert_same(model.state_dict(), state)


def test_load_model_refuses_a_checkpoint_of_another_architecture(tmp_path):
    save_safetensors(create_model("cnn_small").state_dict(), tmp_path / "cnn.safetensors")
    with pytest.raises(CheckpointError, match="missing keys"):
        load_model("mlp", default_config("mlp"), tmp_path / "cnn.safetensors")


# ---------------------------------------------------------------- pruning-tool conventions


def _torch_pruned_mlp():  # noqa: ANN202
    """A real torch.nn.utils.prune model: weight_orig (unzeroed) + weight_mask per layer."""
    import torch.nn.utils.prune as tprune

    from prunescope.models.registry import create_model, default_config
    from prunescope.models.sparsity import prunable_modules

    torch.manual_seed(0)
    model = create_model("mlp", **default_config("mlp"))
    for _, module in prunable_modules(model):
        tprune.l1_unstructured(module, "weight", amount=0.6)
    return model


def test_torch_prune_state_dict_folds_to_orig_times_mask(tmp_path):
    from prunescope.models.checkpoints import load_state_dict_file, validate_for_architecture
    from prunescope.models.sparsity import prunable_modules

    model = _torch_pruned_mlp()
    raw = model.state_dict()
    layers = prunable_modules(model)
    first = layers[0][0]
    assert f"{first}.weight_orig" in raw and f"{first}.weight_mask" in raw
    assert bool((raw[f"{first}.weight_orig"] != 0).all())  # _orig is not zeroed
    path = tmp_path / "pruned.pt"
    torch.save(raw, path)
    state, fmt = load_state_dict_file(path)
    assert fmt == "torch_state_dict+torch_prune"
    assert not any(k.endswith(("_orig", "_mask")) for k in state)
    assert len(layers) == 3
    for name, module in layers:
        effective = module.weight  # what torch's forward pre-hook computes
        assert torch.equal(state[f"{name}.weight"], effective)
        zeros = (state[f"{name}.weight"] == 0).float().mean().item()
        assert abs(zeros - 0.6) < 0.01
    validate_for_architecture(state, "mlp", default_config("mlp"))


def test_shrinkbench_weight_mask_buffers_fold_and_safetensors_too(tmp_path):
    from safetensors.torch import save_file

    from prunescope.models.checkpoints import load_state_dict_file

    torch.manual_seed(1)
    weight = torch.randn(4, 6)
    mask = (torch.rand(4, 6) > 0.5).float()
    path = tmp_path / "sb.safetensors"
    save_file({"fc.weight": weight, "fc.weight_mask": mask, "fc.bias": torch.ones(4)}, str(path))
    state, fmt = load_state_dict_file(path)
    assert fmt == "safetensors+shrinkbench"
    assert set(state) == {"fc.weight", "fc.bias"}
    np.testing.assert_array_equal(state["fc.weight"].numpy(), (weight * mask).numpy())


@pytest.mark.parametrize(
    ("mask", "message"),
    [(torch.full((4, 6), 0.5), "other than 0 and 1"), (torch.ones(3, 6), "shape")],
)
def test_inconsistent_masks_are_refused(tmp_path, mask, message):
    from prunescope.models.checkpoints import CheckpointError, load_state_dict_file

    path = tmp_path / "bad.pt"
    torch.save({"fc.weight_orig": torch.randn(4, 6), "fc.weight_mask": mask}, path)
    with pytest.raises(CheckpointError, match=message):
        load_state_dict_file(path)

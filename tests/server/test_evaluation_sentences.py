"""The Attention page's sentences come from the stored analysis, never from loading the dataset
in the web process, and they are the sentences an attention_maps job indexes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from prunescope.server.db import session_scope
from prunescope.server.schemas import DatasetChoice, JobCreate, ProjectCreate
from prunescope.server.services import analyses, datasets, jobs, projects
from prunescope.server.storage import artifact_store
from prunescope.server.tables import Checkpoint, Dataset
from prunescope.server.worker import run_worker
from prunescope.workers.datasets import load_builtin
from prunescope.workers.text_arrays import pack_texts, unpack_texts
from tests.real_models import tiny_bert_checkpoints


def test_texts_pack_into_plain_arrays_and_back() -> None:
    texts = ["plain", "", "naïve café ☕ — ünïcödé", "a\nnew line"]
    arrays = pack_texts(texts, "sentences")
    assert set(arrays) == {"sentences_utf8", "sentences_offsets"}
    assert arrays["sentences_utf8"].dtype == np.uint8
    assert arrays["sentences_offsets"].tolist()[0] == 0
    assert unpack_texts(arrays, "sentences") == texts
    assert unpack_texts(pack_texts([], "s"), "s") == []
    assert unpack_texts(arrays, "other") is None


def _transformer_project(settings, folder: Path) -> int:  # noqa: ANN001
    """A Hugging Face project on english_sentences with a tiny dense BERT and a pruned one."""
    config, refs = tiny_bert_checkpoints(folder)
    pid = projects.create_project(
        ProjectCreate(name="tiny", architecture="huggingface", architecture_config=config,
                      dataset=DatasetChoice(builtin="english_sentences")), settings).id
    store = artifact_store(settings)
    with session_scope(settings) as s:
        for ref in refs:
            s.add(Checkpoint(project_id=pid, name=ref.name, role=ref.role, source="upload",
                             method=ref.method, target_sparsity=ref.target_sparsity,
                             format="safetensors", artifact_digest=store.put_file(Path(ref.path)),
                             assets_digest=store.put_file(Path(ref.assets_path))))
    return pid


def _run(settings, pid: int, kind: str, **params) -> None:  # noqa: ANN001
    job = jobs.submit_job(pid, JobCreate(kind=kind, params=params), settings)
    assert run_worker(settings, "w", max_jobs=1) == 1
    done = jobs.get_job(job.id, settings)
    assert done.state == "succeeded", done.error


def test_sentences_come_from_the_analysis_and_match_the_attention_maps_job(settings, tmp_path):
    pid = _transformer_project(settings, tmp_path)
    assert datasets.evaluation_sentences(pid, settings) == []  # no analysis yet

    _run(settings, pid, "analyze", neurons=False)
    expected = [str(t) for t in load_builtin("english_sentences").texts_test]
    assert datasets.evaluation_sentences(pid, settings) == expected

    # A fresh web process reads them without torch (and so without loading the dataset).
    script = (
        "import json, sys\n"
        "from prunescope.server.services.datasets import evaluation_sentences\n"
        f"sentences = evaluation_sentences({pid})\n"
        "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "print(json.dumps({'sentences': sentences, 'heavy': heavy}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=os.environ.copy(), timeout=120, check=True)
    fresh = json.loads(out.stdout.strip().splitlines()[-1])
    assert fresh == {"sentences": expected, "heavy": []}

    # The index the page offers is the sentence the attention_maps job reads.
    _run(settings, pid, "attention_maps", sentence=3, max_tokens=12)
    maps = analyses.attention_maps(pid, 3, settings)["maps"]
    assert str(maps["text"]) == expected[3]

    # Another active dataset: the stored sentences are not its sentences, so none are offered
    # until it is analysed; switching back offers them again.
    with session_scope(settings) as s:
        other = Dataset(project_id=pid, name="sentences again", source="builtin",
                        builtin_name="english_sentences", active=False)
        s.add(other)
        s.flush()
        other_id = other.id
    first = next(d for d in datasets.list_datasets(pid, settings) if d.id != other_id)
    datasets.set_active_dataset(pid, other_id, settings)
    assert datasets.evaluation_sentences(pid, settings) == []
    datasets.set_active_dataset(pid, first.id, settings)
    assert datasets.evaluation_sentences(pid, settings) == expected

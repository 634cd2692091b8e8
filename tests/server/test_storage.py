import hashlib

import pytest

from prunescope.server.storage import ArtifactNotFound, ArtifactStore, UploadTooLarge


def test_stream_is_content_addressed_and_deduplicated(tmp_path):
    store = ArtifactStore(tmp_path)
    payload = b"x" * 3_000_000
    chunks = [payload[i : i + 65536] for i in range(0, len(payload), 65536)]
    staged, digest, size = store.write_stream(chunks)
    assert digest == hashlib.sha256(payload).hexdigest() and size == len(payload)
    assert store.adopt(staged, digest) == digest
    assert store.open_path(digest).read_bytes() == payload
    staged2, digest2, _ = store.write_stream([payload])
    store.adopt(staged2, digest2)
    assert digest2 == digest
    assert not staged2.exists()  # the duplicate was dropped, not stored twice
    assert list(store.tmp_dir.iterdir()) == []


def test_oversized_stream_leaves_nothing(tmp_path):
    store = ArtifactStore(tmp_path)
    with pytest.raises(UploadTooLarge):
        store.write_stream([b"a" * 600, b"b" * 600], max_bytes=1000)
    assert list(store.tmp_dir.iterdir()) == []
    assert not (tmp_path / "sha256").exists()


@pytest.mark.parametrize("digest", ["../../etc/passwd", "ab", "Z" * 64, "a" * 63 + "/"])
def test_malformed_digests_never_reach_the_filesystem(tmp_path, digest):
    store = ArtifactStore(tmp_path)
    assert not store.exists(digest)
    with pytest.raises(ArtifactNotFound):
        store.open_path(digest)


def test_a_staged_upload_waits_apart_from_the_artifacts_and_is_discarded(tmp_path):
    store = ArtifactStore(tmp_path)
    payload = b"unvalidated bytes" * 1000
    staged, digest, _ = store.write_stream([payload])
    key = store.stage_upload(staged, digest)
    assert not staged.exists()
    assert store.staged_path(key, digest).read_bytes() == payload
    # Never under its content address: a refusal removes it without touching stored artifacts.
    assert not store.exists(digest)
    store.discard_staged(key)
    store.discard_staged(key)  # twice is harmless
    with pytest.raises(ArtifactNotFound):
        store.staged_path(key, digest)


@pytest.mark.parametrize("key", ["../sha256", "a" * 31, "A" * 32, "a" * 32 + "/x"])
def test_malformed_staging_keys_never_reach_the_filesystem(tmp_path, key):
    store = ArtifactStore(tmp_path)
    with pytest.raises(ArtifactNotFound):
        store.staged_path(key, "0" * 64)

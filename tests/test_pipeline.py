"""The grain pipeline on a small hand-written dataset: shapes, contents, drops, sharding, resume."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import grain
import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter
from etils import epath

from jaxseq.config import DataConfig
from jaxseq.data.eval_batches import make_eval_batches, num_eval_batches
from jaxseq.data.pipeline import (
    EMPTY_TEXT,
    LABEL_TOO_LONG,
    TOO_MANY_FRAMES,
    bucket_length,
    load_dataset_info,
    make_train_iterator,
)
from jaxseq.data.records import encode_record, index_name, shard_name, write_index
from jaxseq.text.vocab import CharVocab

N_MELS = 8
NUM_GOOD = 96  # a multiple of the batch size: one epoch covers every kept item
CFG = DataConfig(
    dataset="unused",
    batch_size=8,
    eval_batch_size=12,
    buckets=(32, 64, 128),
    max_label_length=16,
    sort_pool_batches=2,
    worker_count=0,
    worker_buffer_size=2,
)
CHARSET = "abcdefghijklmnopqrstuvwxyz' "
VOCAB = CharVocab.from_charset(CHARSET)
# id → (num_frames, text, reason) of the items the training length filter must drop.
BAD = {
    "bad-frames": (200, "too long audio", TOO_MANY_FRAMES),
    "bad-label": (40, "a" * 20, LABEL_TOO_LONG),
    "bad-empty": (30, "", EMPTY_TEXT),
    "bad-empty-and-long": (300, "", EMPTY_TEXT),  # the first reason that applies
}


def write_dataset(folder: Path, split: str, items: list[tuple[str, str, np.ndarray]], shards: int):
    """Writes `items` (id, text, features) as a prepared split: shards, index, dataset.json."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [shard_name(split, i, shards) for i in range(shards)]
    for i, part in enumerate(np.array_split(np.arange(len(items)), shards)):
        writer = ArrayRecordWriter(str(folder / names[i]), "group_size:1")
        for k in part:
            writer.write(encode_record(*items[k]))
        writer.close()
    write_index(
        folder / index_name(split),
        [it[0] for it in items],
        [len(it[2]) for it in items],
        [len(it[1]) for it in items],
    )
    info = {
        "frontend": {"n_mels": N_MELS},
        "splits": {split: {"shards": names, "num_utterances": len(items)}},
    }
    (folder / "dataset.json").write_text(json.dumps(info))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict[str, tuple[str, np.ndarray]]]:
    """A 2-shard split of 96 good items (unique texts) and the 4 bad ones, mixed in."""
    rng = np.random.default_rng(0)
    texts: set[str] = set()
    while len(texts) < NUM_GOOD:
        texts.add("".join(rng.choice(list(CHARSET), size=rng.integers(1, 17))))
    items = [
        (f"utt-{i:03d}", t, rng.normal(size=(rng.integers(3, 129), N_MELS)))
        for i, t in enumerate(sorted(texts))
    ]
    for pos, (id_, (frames, text, _)) in zip((5, 40, 41, 90), BAD.items(), strict=True):
        items.insert(pos, (id_, text, rng.normal(size=(frames, N_MELS))))
    folder = tmp_path_factory.mktemp("data")
    write_dataset(folder, "train", items, shards=2)
    by_text = {t: (i, f.astype(np.float16).astype(np.float32)) for i, t, f in items}
    return folder, {"items": items, "by_text": by_text}


def take(it, n: int) -> list[dict[str, np.ndarray]]:
    return [next(it) for _ in range(n)]


def rows(batch, by_text):
    """(id, text) of every row, checking features and labels against the stored record."""
    out = []
    for r in range(len(batch["labels"])):
        text = VOCAB.decode(batch["labels"][r, : batch["label_lengths"][r]])
        assert not batch["labels"][r, batch["label_lengths"][r] :].any()
        id_, feats = by_text[text]
        n = batch["feature_lengths"][r]
        assert n == len(feats)
        np.testing.assert_array_equal(batch["features"][r, :n], feats)
        assert not batch["features"][r, n:].any()
        out.append(id_)
    return out


def test_bucket_length():
    assert [bucket_length(n, (32, 64)) for n in (1, 32, 33, 64, 65, 129)] == [
        32,
        32,
        64,
        64,
        128,
        192,
    ]


def test_load_dataset_info_errors(dataset, tmp_path):
    folder, _ = dataset
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_dataset_info(tmp_path)
    with pytest.raises(ValueError, match=r"no split 'valid'.*\['train'\]"):
        load_dataset_info(folder, "valid")
    assert load_dataset_info(folder, "train")["frontend"]["n_mels"] == N_MELS


def test_train_batches_shapes_contents_and_drops(dataset):
    folder, data = dataset
    it = make_train_iterator(folder, "train", CFG, VOCAB, seed=1)
    assert {(d["id"], d["reason"]) for d in it.dropped} == {(k, v[2]) for k, v in BAD.items()}
    assert it.num_kept == NUM_GOOD and it.batches_per_epoch == NUM_GOOD // CFG.batch_size
    seen, shapes = [], set()
    for batch in take(it, it.batches_per_epoch):
        assert {k: (v.dtype, v.shape) for k, v in batch.items()} == {
            "features": (np.float16, (8, batch["features"].shape[1], N_MELS)),
            "feature_lengths": (np.int32, (8,)),
            "labels": (np.int32, (8, CFG.max_label_length)),
            "label_lengths": (np.int32, (8,)),
        }
        length = batch["features"].shape[1]
        assert length == bucket_length(batch["feature_lengths"].max(), CFG.buckets)
        shapes.add(length)
        seen += rows(batch, data["by_text"])
    assert shapes <= set(CFG.buckets)
    good = {i for i, _, _ in data["items"] if i not in BAD}
    assert sorted(seen) == sorted(good)  # every kept item exactly once per epoch


def test_two_processes_share_shapes_and_split_the_epoch(dataset):
    folder, data = dataset
    its = [
        make_train_iterator(folder, "train", CFG, VOCAB, seed=3, process_index=p, process_count=2)
        for p in range(2)
    ]
    seen = [[], []]
    for _ in range(its[0].batches_per_epoch):
        b0, b1 = next(its[0]), next(its[1])
        assert b0["features"].shape == b1["features"].shape == (4, b0["features"].shape[1], N_MELS)
        longest = max(b0["feature_lengths"].max(), b1["feature_lengths"].max())
        assert b0["features"].shape[1] == bucket_length(longest, CFG.buckets)
        seen[0] += rows(b0, data["by_text"])
        seen[1] += rows(b1, data["by_text"])
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(i for i, _, _ in data["items"] if i not in BAD)
    with pytest.raises(ValueError, match="not divisible"):
        make_train_iterator(folder, "train", CFG, VOCAB, seed=3, process_count=3)


def test_determinism_and_epochs(dataset):
    folder, data = dataset
    bpe = NUM_GOOD // CFG.batch_size

    def epochs(seed):
        it = make_train_iterator(folder, "train", CFG, VOCAB, seed=seed)
        return [[rows(b, data["by_text"]) for b in take(it, bpe)] for _ in range(2)]

    first = epochs(seed=7)
    assert first == epochs(seed=7)
    assert first[0] != first[1]  # each epoch is reshuffled
    assert sorted(sum(first[0], [])) == sorted(sum(first[1], []))
    assert first[0] != epochs(seed=8)[0]


def assert_same_batches(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            assert np.array_equal(x[k], y[k]), k


def test_resume_with_worker_processes(dataset, tmp_path):
    folder, _ = dataset
    cfg = dataclasses.replace(CFG, worker_count=2)
    k, n = 10, 5  # crosses the epoch boundary (12 batches per epoch)
    it = make_train_iterator(folder, "train", cfg, VOCAB, seed=5)
    take(it, k)
    grain.checkpoint.CheckpointHandler().save(epath.Path(tmp_path), item=it)  # state is JSON
    state = it.get_state()
    expected = take(it, n)
    it.close()

    restored = make_train_iterator(folder, "train", cfg, VOCAB, seed=5)
    restored.set_state(state)
    assert_same_batches(take(restored, n), expected)
    restored.close()

    from_disk = make_train_iterator(folder, "train", cfg, VOCAB, seed=5)
    grain.checkpoint.CheckpointHandler().restore(epath.Path(tmp_path), item=from_disk)
    assert_same_batches(take(from_disk, n), expected)
    from_disk.close()

    # Worker processes do not change the batches: the same stream as in-process reading, which
    # also resumes from the state the workers' iterator saved.
    in_process = make_train_iterator(folder, "train", CFG, VOCAB, seed=5)
    assert_same_batches(take(in_process, k + n)[k:], expected)
    in_process.set_state(state)
    assert_same_batches(take(in_process, n), expected)


def test_resume_on_two_processes_continues_the_global_batches(dataset):
    folder, _ = dataset
    single = make_train_iterator(folder, "train", CFG, VOCAB, seed=2)
    take(single, 4)
    state = single.get_state()
    expected = take(single, 3)
    halves = []
    for p in range(2):
        it = make_train_iterator(
            folder, "train", CFG, VOCAB, seed=2, process_index=p, process_count=2
        )
        it.set_state(state)
        halves.append(take(it, 3))
    joined = [{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(*halves, strict=True)]
    assert_same_batches(joined, expected)


def test_eval_batches_cover_everything_in_order(dataset):
    folder, data = dataset
    items = data["items"]
    per_process = []
    for p in range(2):
        got = list(make_eval_batches(folder, "train", CFG, VOCAB, process_index=p, process_count=2))
        assert len(got) == num_eval_batches(folder, "train", CFG, process_count=2) == 9
        per_process.append(got)
    ids, texts = [], []
    for (b0, ids0, texts0), (b1, ids1, texts1) in zip(*per_process, strict=True):
        assert b0["features"].shape == b1["features"].shape
        assert b0["labels"].shape == b1["labels"].shape
        for batch, bids, btexts in ((b0, ids0, texts0), (b1, ids1, texts1)):
            assert batch["valid"].dtype == bool and batch["valid"].shape == (6,)
            assert list(batch["valid"]) == [i != "" for i in bids]
            invalid = ~batch["valid"]
            assert not batch["feature_lengths"][invalid].any()
            assert not batch["features"][invalid].any() and not batch["labels"][invalid].any()
            for r in np.flatnonzero(batch["valid"]):
                n, m = batch["feature_lengths"][r], batch["label_lengths"][r]
                stored = dict((i, (t, f)) for i, t, f in items)[bids[r]]
                assert VOCAB.decode(batch["labels"][r, :m]) == btexts[r] == stored[0]
                expect = stored[1].astype(np.float16).astype(np.float32)
                np.testing.assert_array_equal(batch["features"][r, :n], expect)
                assert not batch["features"][r, n:].any()
            ids += [i for i in bids if i]
            texts += [t for i, t in zip(bids, btexts, strict=True) if i]
        longest = max(b0["feature_lengths"].max(), b1["feature_lengths"].max())
        assert b0["features"].shape[1] == bucket_length(longest, CFG.buckets)
        if "bad-frames" in ids0 + ids1:
            assert b0["features"].shape[1] == 256  # kept, padded beyond the largest bucket
        if "bad-label" in ids0 + ids1:
            assert b0["labels"].shape[1] == 32  # 20 ids → a multiple of 32
        else:
            assert b0["labels"].shape[1] == CFG.max_label_length
    assert ids == [i for i, _, _ in items] and texts == [t for _, t, _ in items]
    last0, last1 = per_process[0][-1][0], per_process[1][-1][0]
    assert last0["valid"].sum() == 4 and last1["valid"].sum() == 0  # 100 = 8 * 12 + 4

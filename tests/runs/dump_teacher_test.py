"""dump_teacher: circular masks, top-K equal to direct passes, resume."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from bertkd_tf.data.task import Task
from bertkd_tf.data.teacher_targets import TeacherTargets
from bertkd_tf.models.cmlm_preprocessor import CMLMPreprocessor
from bertkd_tf.models.cmlm_teacher import CMLMTeacher
from bertkd_tf.runs import dump_teacher, train_teacher

K = 8
REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures")
TINY_CORPUS = os.path.join(FIXTURES, "tiny_de_en")
TINY_BERT_VOCAB = os.path.join(FIXTURES, "bert_vocab_uncased.txt")
PAIRS_PER_SHARD = 16  # the 40 fixture pairs -> 3 shards


def _save_teacher(vocab, directory, seed):
    keras.utils.set_random_seed(seed)
    teacher = CMLMTeacher.from_scratch(
        vocab.bert_ids,
        vocabulary_size=vocab.tokenizer.vocabulary_size,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=64,
    )
    train_teacher.save_teacher(teacher, directory)


def _task(corpus, **kwargs):
    return Task(
        corpus, "de", "en", max_source_length=24, max_target_length=24, **kwargs
    )


def _dump(work_dir, corpus, **kwargs):
    settings = dict(
        task=_task(corpus),
        work_dir=work_dir,
        top_k=K,
        tokens_per_batch=2048,
        pairs_per_shard=PAIRS_PER_SHARD,
    )
    settings.update(kwargs)
    return dump_teacher.run(**settings)


@pytest.fixture(scope="module")
def dumped(tmp_path_factory):
    """A work dir with vocab/, teacher/ and a complete targets/ dump."""
    from bertkd_tf.data.bert_word_piece_tokenizer import (
        BertWordPieceTokenizer,
        load_bert_vocabulary,
    )
    from bertkd_tf.data.task_vocabulary import TaskVocabulary
    from bertkd_tf.data.text_pairs import read_text_pairs

    tokenizer = BertWordPieceTokenizer(load_bert_vocabulary(TINY_BERT_VOCAB))
    pairs = read_text_pairs(TINY_CORPUS, "train", "de", "en")
    vocab = TaskVocabulary.build(tokenizer, pairs.sources + pairs.targets)
    work_dir = str(tmp_path_factory.mktemp("dump") / "work")
    vocab.save(os.path.join(work_dir, "vocab"))
    _save_teacher(vocab, os.path.join(work_dir, "teacher"), seed=1)
    result = _dump(work_dir, TINY_CORPUS)
    return {
        "work_dir": work_dir,
        "vocab": vocab,
        "result": result,
        "corpus": TINY_CORPUS,
    }


# Circular masks ------------------------------------------------------------


@pytest.mark.parametrize("num_passes", [1, 3, 7])
def test_every_slot_masked_exactly_once(num_passes):
    lengths = np.array([1, 2, 3, 6, 7, 8, 13, 14, 15, 40])
    copy_pair, slots, valid = (
        t.numpy() for t in dump_teacher.circular_mask_slots(lengths, num_passes)
    )
    for pair, length in enumerate(lengths):
        mine = copy_pair == pair
        copies = min(num_passes, length)
        assert mine.sum() == copies
        masked = slots[mine][valid[mine]]
        # Each slot 0..T-1 (the EOS slot T-1 included) exactly once.
        assert sorted(masked.tolist()) == list(range(length))
        for i, (row, ok) in enumerate(zip(slots[mine], valid[mine])):
            assert np.all(row[ok] % copies == i)
            if length <= num_passes:
                assert ok.sum() == 1  # short targets: one slot per copy


def test_copies_mask_targets_never_sources(tiny_vocab):
    preprocessor = CMLMPreprocessor(tiny_vocab.bert_ids, max_sequence_length=32)
    packed = preprocessor.pack(
        tf.ragged.constant([[7, 8, 9], [10]]),
        tf.ragged.constant([[11, 12, 13, 14, 15, 16, 17, 18], [13, 14]]),
    )
    x, copy_pair, _, _ = dump_teacher.masked_copies(
        packed, 7, preprocessor.mask_token_id
    )
    token_ids = x["token_ids"].numpy()
    original = packed["token_ids"].numpy()
    copy_pair = copy_pair.numpy()
    assert copy_pair.tolist() == [0] * 7 + [1] * 3
    starts = packed["target_start"].numpy()
    rows = packed["target_length"].numpy() + 1
    for pair in range(2):
        copies = token_ids[copy_pair == pair]
        changed = copies != original[pair]
        target = np.zeros(original.shape[1], bool)
        target[starts[pair] : starts[pair] + rows[pair]] = True
        assert not changed[:, ~target].any()  # source, [CLS], padding kept
        assert np.all(changed.sum(axis=0)[target] == 1)  # each slot once
        assert np.all(copies[changed] == preprocessor.mask_token_id)
        # Mask positions point at the masked tokens (the EOS slot included).
        positions = x["mask_positions"].numpy()[copy_pair == pair]
        for copy, row in zip(changed, positions):
            assert set(np.flatnonzero(copy)) <= set(row.tolist())


# Dump against direct forward passes ------------------------------------------


def _direct_top_k(teacher, preprocessor, source, target, slots):
    """Top-K of a single unpadded forward pass with exactly `slots` masked."""
    packed = preprocessor.pack(
        tf.constant(source, tf.int32), tf.constant(target, tf.int32)
    )
    positions = int(packed["target_start"]) + np.asarray(slots)
    token_ids = packed["token_ids"].numpy().copy()
    token_ids[positions] = preprocessor.mask_token_id
    logits = teacher(
        {
            "token_ids": token_ids[None],
            "segment_ids": packed["segment_ids"].numpy()[None],
            "padding_mask": packed["padding_mask"].numpy()[None],
            "mask_positions": positions[None].astype("int32"),
        },
        training=False,
    )
    values, ids = tf.math.top_k(logits[0], k=K)
    return ids.numpy(), values.numpy()


def _tokenized(dumped, **task_kwargs):
    from bertkd_tf.data.tokenized_pairs import TokenizedPairs

    task = _task(dumped["corpus"], **task_kwargs)
    return TokenizedPairs.from_pairs(
        task.read("train"), dumped["vocab"], 24, 24
    )


def test_stored_top_k_equals_direct_pass_per_copy(dumped):
    """Circular masks (P=7): each row equals a pass masking its copy."""
    work_dir = dumped["work_dir"]
    teacher = train_teacher.load_teacher(os.path.join(work_dir, "teacher"))
    preprocessor = CMLMPreprocessor(dumped["vocab"].bert_ids, 64)
    targets = TeacherTargets.load(os.path.join(work_dir, "targets"))
    tokenized = _tokenized(dumped)
    assert len(targets) == len(tokenized) == 40
    lengths = tokenized.lengths()[1] + 1
    longest = np.argsort(-lengths, kind="stable")[:2]
    shortest = int(np.argmin(lengths))
    assert lengths[longest[1]] > 7 >= lengths[shortest]
    for n in [*longest, shortest]:
        source = tokenized.source[n].numpy()
        target = tokenized.target[n].numpy()
        length = len(target) + 1
        copies = min(7, length)
        stored_ids, stored_logits = targets.lookup(tokenized.ids[n])
        assert stored_ids.shape == (length, K)
        for copy in sorted({0, 3 % copies, (length - 1) % copies}):
            slots = list(range(copy, length, copies))
            ids, logits = _direct_top_k(
                teacher, preprocessor, source, target, slots
            )
            np.testing.assert_array_equal(stored_ids[slots], ids)
            np.testing.assert_allclose(
                stored_logits[slots].astype("float32"),
                logits,
                rtol=2e-3,
                atol=2e-3,
            )


def test_stored_top_k_equals_pass_with_exactly_that_position_masked(
    dumped, tmp_path
):
    """P larger than every target: each position is masked on its own."""
    work_dir = dumped["work_dir"]
    output_dir = str(tmp_path / "single")
    _dump(
        work_dir,
        dumped["corpus"],
        task=_task(dumped["corpus"], max_train_pairs=3),
        num_passes=64,
        output_dir=output_dir,
    )
    teacher = train_teacher.load_teacher(os.path.join(work_dir, "teacher"))
    preprocessor = CMLMPreprocessor(dumped["vocab"].bert_ids, 64)
    targets = TeacherTargets.load(output_dir)
    tokenized = _tokenized(dumped, max_train_pairs=3)
    assert len(targets) == 3
    for n in range(3):
        source = tokenized.source[n].numpy()
        target = tokenized.target[n].numpy()
        stored_ids, stored_logits = targets.lookup(tokenized.ids[n])
        for slot in range(len(target) + 1):  # the EOS slot last
            ids, logits = _direct_top_k(
                teacher, preprocessor, source, target, [slot]
            )
            np.testing.assert_array_equal(stored_ids[slot], ids[0])
            np.testing.assert_allclose(
                stored_logits[slot].astype("float32"),
                logits[0],
                rtol=2e-3,
                atol=2e-3,
            )


def test_relative_output_dir_is_under_work_dir(dumped):
    work_dir = dumped["work_dir"]
    result = _dump(
        work_dir,
        dumped["corpus"],
        task=_task(dumped["corpus"], max_train_pairs=2),
        output_dir="targets_relative",
    )
    expected = os.path.join(work_dir, "targets_relative")
    assert result["output_dir"] == expected
    assert len(TeacherTargets.load(expected)) == 2


# Storage, resume, refusals -------------------------------------------------


def test_manifest_and_shards(dumped):
    output_dir = os.path.join(dumped["work_dir"], "targets")
    with open(os.path.join(output_dir, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["complete"] is True
    assert manifest["top_k"] == K and manifest["num_passes"] == 7
    assert manifest["num_pairs"] == 40 and manifest["num_shards"] == 3
    assert manifest["vocabulary_fingerprint"] == dumped["vocab"].fingerprint
    assert manifest["teacher_fingerprint"] == dump_teacher.teacher_fingerprint(
        os.path.join(dumped["work_dir"], "teacher")
    )
    names = sorted(n for n in os.listdir(output_dir) if n.endswith(".tfrecord"))
    assert names == [dump_teacher.shard_name(s, 3) for s in range(3)]
    assert sorted(manifest["shards"]) == names
    tokenized = _tokenized(dumped)
    positions = int(np.sum(tokenized.lengths()[1] + 1))
    assert manifest["num_positions"] == positions
    assert dumped["result"]["num_positions"] == positions
    assert manifest["bytes"] == sum(
        os.path.getsize(os.path.join(output_dir, n)) for n in names
    )
    for name in names:
        with open(os.path.join(output_dir, name), "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        assert manifest["shards"][name]["sha256"] == digest, name
    assert manifest["teacher_dir"] == "teacher"  # relative to work_dir
    assert not [n for n in os.listdir(output_dir) if ".tmp-" in n]


def test_resume_after_crash_is_byte_identical(dumped, tmp_path, monkeypatch):
    work_dir = str(tmp_path / "work")
    shutil.copytree(
        os.path.join(dumped["work_dir"], "vocab"),
        os.path.join(work_dir, "vocab"),
    )
    shutil.copytree(
        os.path.join(dumped["work_dir"], "teacher"),
        os.path.join(work_dir, "teacher"),
    )
    output_dir = os.path.join(work_dir, "targets")
    partial = _dump(work_dir, dumped["corpus"], max_new_shards=1)
    assert partial["complete"] is False
    with pytest.raises(ValueError, match="incomplete"):
        TeacherTargets.load(output_dir)
    # A crash in the middle of the next shard leaves a temporary file.
    leftover = os.path.join(output_dir, dump_teacher.shard_name(1, 3))
    with open(leftover + ".tmp-999", "wb") as f:
        f.write(b"half a shard")
    first = os.path.join(output_dir, dump_teacher.shard_name(0, 3))
    first_stat = os.stat(first)

    written = []
    write = dump_teacher._write_records
    monkeypatch.setattr(
        dump_teacher,
        "_write_records",
        lambda path, records: (
            written.append(os.path.basename(path)) or write(path, records)
        ),
    )
    resumed = _dump(work_dir, dumped["corpus"])
    assert resumed["complete"] is True
    assert written == [dump_teacher.shard_name(s, 3) for s in (1, 2)]
    assert os.stat(first).st_mtime_ns == first_stat.st_mtime_ns
    reference = os.path.join(dumped["work_dir"], "targets")
    for s in range(3):
        name = dump_teacher.shard_name(s, 3)
        with (
            open(os.path.join(output_dir, name), "rb") as a,
            open(os.path.join(reference, name), "rb") as b,
        ):
            assert a.read() == b.read(), name
    assert not [n for n in os.listdir(output_dir) if ".tmp-" in n]
    # A finished dump: running again writes nothing.
    written.clear()
    _dump(work_dir, dumped["corpus"])
    assert written == []


def test_other_teacher_or_settings_refused(dumped, tmp_path):
    work_dir = str(tmp_path / "work")
    shutil.copytree(
        os.path.join(dumped["work_dir"], "vocab"),
        os.path.join(work_dir, "vocab"),
    )
    shutil.copytree(
        os.path.join(dumped["work_dir"], "targets"),
        os.path.join(work_dir, "targets"),
    )
    _save_teacher(dumped["vocab"], os.path.join(work_dir, "teacher"), seed=2)
    with pytest.raises(ValueError, match="teacher_fingerprint: stored"):
        _dump(work_dir, dumped["corpus"])
    shutil.rmtree(os.path.join(work_dir, "teacher"))
    shutil.copytree(
        os.path.join(dumped["work_dir"], "teacher"),
        os.path.join(work_dir, "teacher"),
    )
    with pytest.raises(ValueError, match="top_k: stored 8, now 16"):
        _dump(work_dir, dumped["corpus"], top_k=16)
    with pytest.raises(ValueError, match="num_passes: stored 7, now 5"):
        _dump(work_dir, dumped["corpus"], num_passes=5)


def test_bad_arguments_refused(dumped, tmp_path):
    with pytest.raises(ValueError, match=r"top_k must be in \[1, 64\]; got 65"):
        _dump(dumped["work_dir"], dumped["corpus"], top_k=65)
    with pytest.raises(FileNotFoundError, match="train_teacher"):
        _dump(
            dumped["work_dir"],
            dumped["corpus"],
            teacher_dir=str(tmp_path / "none"),
        )


def test_mode_through_gin(dumped, tmp_path):
    """The experiment gin runs the mode and writes its operative config."""
    import gin

    from bertkd_tf import main

    output_dir = str(tmp_path / "targets")
    gin.clear_config()
    try:
        result = main.run_mode(
            "dump_teacher",
            ["gin/experiments/multi30k_de_en_dump.gin"],
            [
                f"DATA_DIR='{dumped['corpus']}'",
                f"WORK_DIR='{dumped['work_dir']}'",
                "MIXED_PRECISION=False",
                "TOKENS_PER_BATCH=2048",
                "dump_teacher.run.pairs_per_shard=16",
                f"dump_teacher.run.output_dir='{output_dir}'",
            ],
        )
    finally:
        gin.clear_config()
    assert result["output_dir"] == output_dir and result["complete"]
    assert os.path.exists(os.path.join(output_dir, "operative_config.gin"))
    # Task limits 64/64 keep the same 40 pairs: the same shards as above.
    for s in range(3):
        name = dump_teacher.shard_name(s, 3)
        with (
            open(os.path.join(output_dir, name), "rb") as a,
            open(os.path.join(dumped["work_dir"], "targets", name), "rb") as b,
        ):
            assert a.read() == b.read(), name


# Byte-identical dumps, damaged shards (issue 16) ----------------------------


def _digests(directory):
    """sha256 of every shard and of the manifest of a targets directory."""
    names = sorted(
        n
        for n in os.listdir(directory)
        if n.endswith(".tfrecord") or n == "manifest.json"
    )
    digests = {}
    for name in names:
        with open(os.path.join(directory, name), "rb") as f:
            digests[name] = hashlib.sha256(f.read()).hexdigest()
    return digests


def _copy_work_dir(dumped, tmp_path, parts=("vocab", "teacher", "targets")):
    work_dir = str(tmp_path / "work")
    for part in parts:
        shutil.copytree(
            os.path.join(dumped["work_dir"], part),
            os.path.join(work_dir, part),
        )
    return work_dir


def _damage(path, how):
    with open(path, "r+b") as f:
        if how == "truncate":
            f.truncate(os.path.getsize(path) // 2)
        else:  # flip one bit in the middle: same size, other bytes
            f.seek(os.path.getsize(path) // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0x10]))


def _recording_writes(monkeypatch):
    written = []
    write = dump_teacher._write_records
    monkeypatch.setattr(
        dump_teacher,
        "_write_records",
        lambda path, records: (
            written.append(os.path.basename(path)) or write(path, records)
        ),
    )
    return written


def test_rerun_rewrites_damaged_shards_byte_identical(
    dumped, tmp_path, monkeypatch, caplog
):
    work_dir = _copy_work_dir(dumped, tmp_path)
    output_dir = os.path.join(work_dir, "targets")
    truncated = os.path.join(output_dir, dump_teacher.shard_name(1, 3))
    flipped = os.path.join(output_dir, dump_teacher.shard_name(2, 3))
    _damage(truncated, "truncate")
    _damage(flipped, "flip")
    written = _recording_writes(monkeypatch)
    with caplog.at_level("WARNING"):
        result = _dump(work_dir, dumped["corpus"])
    assert result["complete"] is True
    assert written == [dump_teacher.shard_name(s, 3) for s in (1, 2)]
    for path in (truncated, flipped):
        assert f"{path} is damaged" in caplog.text
        assert "writing it again" in caplog.text
    reference = _digests(os.path.join(dumped["work_dir"], "targets"))
    assert _digests(output_dir) == reference
    assert len(reference) == 4  # 3 shards and the manifest


def test_rerun_of_older_dump_checks_records_and_records_digests(
    dumped, tmp_path, monkeypatch
):
    """A manifest without digests: sound shards kept, damaged ones rewritten."""
    work_dir = _copy_work_dir(dumped, tmp_path)
    output_dir = os.path.join(work_dir, "targets")
    path = os.path.join(output_dir, "manifest.json")
    with open(path) as f:
        manifest = json.load(f)
    for info in manifest["shards"].values():
        del info["sha256"]
    with open(path, "w") as f:
        json.dump(manifest, f)
    _damage(os.path.join(output_dir, dump_teacher.shard_name(0, 3)), "flip")
    written = _recording_writes(monkeypatch)
    _dump(work_dir, dumped["corpus"])
    assert written == [dump_teacher.shard_name(0, 3)]
    reference = _digests(os.path.join(dumped["work_dir"], "targets"))
    assert _digests(output_dir) == reference


# Started with `python -c`: the `bertkd` binary, whose second shard write
# leaves half a shard in its temporary file, says so and waits to be killed.
_HANG_IN_SECOND_SHARD = """
import os, sys, time
from bertkd_tf.runs import dump_teacher
write = dump_teacher._write_records
calls = []
def write_or_hang(path, records):
    calls.append(path)
    if len(calls) == 2:
        with open(f"{path}.tmp-{os.getpid()}", "wb") as f:
            f.write(b"".join(records[: len(records) // 2]))
        open(os.environ["BERTKD_TEST_READY"], "w").close()
        time.sleep(600)
    return write(path, records)
dump_teacher._write_records = write_or_hang
from bertkd_tf.main import console_main
console_main()
"""


@pytest.mark.slow
def test_killed_dump_resumed_in_other_processes_is_byte_identical(
    dumped, tmp_path
):
    """kill -9 after the first shard, rerun: every shard and the manifest
    are byte-identical to the dump made in this (another) process."""
    output_dir = str(tmp_path / "targets")
    flags = [
        "--mode=dump_teacher",
        "--gin_file=gin/experiments/multi30k_de_en_dump.gin",
        f"--gin_bindings=DATA_DIR='{dumped['corpus']}'",
        f"--gin_bindings=WORK_DIR='{dumped['work_dir']}'",
        "--gin_bindings=MIXED_PRECISION=False",
        "--gin_bindings=TOKENS_PER_BATCH=2048",
        "--gin_bindings=dump_teacher.run.pairs_per_shard=16",
        f"--gin_bindings=dump_teacher.run.output_dir='{output_dir}'",
    ]
    ready = str(tmp_path / "ready")
    env = dict(os.environ, BERTKD_TEST_READY=ready, TF_CPP_MIN_LOG_LEVEL="2")
    log_path = tmp_path / "killed.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", _HANG_IN_SECOND_SHARD, *flags],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.time() + 120
            while not os.path.exists(ready):
                assert process.poll() is None, log_path.read_text()[-3000:]
                assert time.time() < deadline, "the dump never got to shard 2"
                time.sleep(0.05)
            process.send_signal(signal.SIGKILL)
            assert process.wait(timeout=30) == -signal.SIGKILL
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    with open(os.path.join(output_dir, "manifest.json")) as f:
        assert sorted(json.load(f)["shards"]) == [dump_teacher.shard_name(0, 3)]
    assert [n for n in os.listdir(output_dir) if ".tmp-" in n]

    resumed = subprocess.run(
        [sys.executable, "-m", "bertkd_tf.main", *flags],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not [n for n in os.listdir(output_dir) if ".tmp-" in n]
    reference = _digests(os.path.join(dumped["work_dir"], "targets"))
    assert len(reference) == 4  # 3 shards and the manifest
    assert _digests(output_dir) == reference


# Progress and scaling out (issue 18 points 6 and 9) -------------------------


def test_progress_logs_pairs_per_second_and_time_left(caplog):
    """A fake clock: pairs/s over the elapsed time, the time left from the
    positions still to dump at the positions/s so far; a line every
    `every_seconds` and when forced."""
    now = [1000.0]
    progress = dump_teacher._Progress(
        total_pairs=400,
        total_positions=9000,
        every_seconds=60,
        clock=lambda: now[0],
    )
    caplog.set_level("INFO")
    # absl logs through the "absl" logger, whose level an earlier test may
    # have raised (absl verbosity): INFO must reach caplog whatever ran.
    caplog.set_level("INFO", logger="absl")
    now[0] += 30
    progress.update(100, 1500)  # Under a minute since the start: quiet.
    assert "pairs/s" not in caplog.text
    now[0] += 45  # 75 s: 2 pairs/s, 20 positions/s; 7,500 left = 6:15.
    progress.update(50, 0)
    assert (
        "dump: 150/400 pairs (37.5%), 1500/9000 positions, 2.0 pairs/s, "
        "20 positions/s, 1:15 elapsed, ETA 6:15 left"
    ) in caplog.text
    now[0] += 3 * 3600  # 1,500 positions in 10,875 s: 7,500 take 5x.
    assert progress.message(now[0]).endswith(
        "3:01:15 elapsed, ETA 15:06:15 left"
    )
    progress.update(250, 7500, force=True)
    assert "400/400 pairs (100.0%)" in caplog.text
    assert caplog.text.rstrip().endswith("elapsed")  # Done: no ETA.


def test_replicated_top_k_splits_rows_and_restores_their_order():
    """Rows go round-robin to the replicas (the last one repeated to fill)
    and come back in their order; one replica calls the function as is."""
    strategy = tf.distribute.get_strategy()

    class TwoReplicas:
        num_replicas_in_sync = 2

        def experimental_distribute_values_from_function(self, fn):
            class Context:
                def __init__(self, i):
                    self.replica_id_in_sync_group = i

            return [fn(Context(i)) for i in range(2)]

        def run(self, fn, args):
            outputs = [fn(*(a[i] for a in args)) for i in range(2)]
            return [list(values) for values in zip(*outputs)]

        def experimental_local_results(self, value):
            return value

    seen = []

    def top_k_fn(source, target):
        seen.append(np.asarray(source)[:, 0].tolist())
        return (tf.constant(source) * 10, tf.constant(target) + 1)

    source = np.arange(5)[:, None] * np.ones((1, 3), np.int32)
    target = np.arange(5)[:, None] * np.ones((1, 2), np.int32)
    outputs = dump_teacher._ReplicatedTopK(top_k_fn, TwoReplicas())(
        source, target
    )
    assert seen == [[0, 2, 4], [1, 3, 4]]
    np.testing.assert_array_equal(outputs[0], source * 10)
    np.testing.assert_array_equal(outputs[1], target + 1)
    del seen[:]
    one = dump_teacher._ReplicatedTopK(top_k_fn, None)(source, target)
    assert seen == [[0, 1, 2, 3, 4]] and strategy.num_replicas_in_sync == 1
    np.testing.assert_array_equal(one[0], source * 10)


def test_multi_worker_dump_is_refused(dumped, tmp_path):
    with pytest.raises(dump_teacher.ConfigError, match="max_new_shards"):
        _dump(
            dumped["work_dir"],
            TINY_CORPUS,
            output_dir=str(tmp_path / "t"),
            strategy="multi_worker",
        )


@pytest.mark.slow
def test_two_replica_dump_is_byte_identical(dumped, tmp_path):
    """`STRATEGY = 'mirrored'` with `LOGICAL_DEVICES = 2` (two logical CPU
    devices, set by the binary's gin knob): every batch is split over two
    replicas, and the shards and manifest are the bytes of the one-device
    dump."""
    output_dir = str(tmp_path / "targets")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bertkd_tf.main",
            "--mode=dump_teacher",
            "--gin_file=gin/experiments/multi30k_de_en_dump.gin",
            f"--gin_bindings=DATA_DIR='{dumped['corpus']}'",
            f"--gin_bindings=WORK_DIR='{dumped['work_dir']}'",
            "--gin_bindings=MIXED_PRECISION=False",
            "--gin_bindings=TOKENS_PER_BATCH=2048",
            "--gin_bindings=STRATEGY='mirrored'",
            "--gin_bindings=LOGICAL_DEVICES=2",
            "--gin_bindings=dump_teacher.run.pairs_per_shard=16",
            f"--gin_bindings=dump_teacher.run.output_dir='{output_dir}'",
        ],
        cwd=REPO,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 replica(s)" in result.stderr, result.stderr[-3000:]
    reference = _digests(os.path.join(dumped["work_dir"], "targets"))
    assert _digests(output_dir) == reference


def _lengths_only(source_lengths, target_lengths):
    class Pairs:
        def lengths(self):
            return np.asarray(source_lengths), np.asarray(target_lengths)

    return Pairs()


def test_batches_sorted_by_packed_length_within_the_budget():
    from bertkd_tf.data.batching import TokenBudgetBatcher

    rng = np.random.default_rng(0)
    source = rng.integers(1, 30, 500)
    target = rng.integers(1, 30, 500)
    packed = source + target + 3
    batcher = TokenBudgetBatcher(256, [8, 16, 32, 64], drop_remainder=False)
    batches = dump_teacher.token_budget_batches(
        _lengths_only(source, target), batcher
    )
    rows = np.concatenate(batches)
    # Every pair once, in order of packed length (ties in pair order).
    np.testing.assert_array_equal(rows, np.argsort(packed, kind="stable"))
    for batch in batches:
        assert len(batch) * packed[batch].max() <= 256
    # Each batch padded to its own longest pair: far less padding than the
    # bucket boundaries 8/16/32/64 would leave.
    computed = sum(len(b) * packed[b].max() for b in batches)
    bounds = np.asarray(batcher.bucket_boundaries)
    bucketed = bounds[np.searchsorted(bounds, packed)].sum()
    assert 1 - packed.sum() / computed < 0.05
    assert 1 - packed.sum() / bucketed > 0.15
    capped = TokenBudgetBatcher(
        256, [64], drop_remainder=False, max_batch_size=3
    )
    assert (
        max(
            len(b)
            for b in dump_teacher.token_budget_batches(
                _lengths_only(source, target), capped
            )
        )
        == 3
    )
    with pytest.raises(ValueError, match="more than the last bucket"):
        dump_teacher.token_budget_batches(
            _lengths_only([70], [5]), TokenBudgetBatcher(256, [16, 64])
        )

"""train_teacher: a tiny end-to-end run, resume after a crash, saved teacher."""

import functools
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from bertkd_tf.data.bert_word_piece_tokenizer import BertWordPieceTokenizer
from bertkd_tf.data.task import Task
from bertkd_tf.data.task_vocabulary import TaskVocabulary
from bertkd_tf.models.cmlm_preprocessor import CMLMPreprocessor
from bertkd_tf.models.cmlm_teacher import CMLMTeacher
from bertkd_tf.runs import train_teacher
from bertkd_tf.training import trainer
from bertkd_tf.training.fused_adam import FusedAdam

WORDS = "a dog cat runs sits the red ball ein hund katze läuft der rote".split()
BERT_VOCABULARY = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "unused",
    *WORDS,
    "##s",
]


TRAIN_STEPS = 100


class _Crash(Exception):
    pass


# German -> English word by word: a corpus whose targets the C-MLM teacher
# can learn to fill in from the source.
TRANSLATION = {
    "ein": "a",
    "hund": "dog",
    "katze": "cat",
    "läuft": "runs",
    "der": "the",
    "rote": "red",
}


def _write_corpus(directory, lines, seed, parallel=False, valid_lines=6):
    rng = np.random.default_rng(seed)
    english = WORDS[:8]
    german = WORDS[8:]
    with (
        open(directory / "train.de", "w") as de,
        open(directory / "train.en", "w") as en,
    ):
        for _ in range(lines):
            n = int(rng.integers(2, 6))
            source = rng.choice(german, n)
            if parallel:
                target = [TRANSLATION[word] for word in source]
            else:
                target = rng.choice(english, n)
            de.write(" ".join(source) + "\n")
            en.write(" ".join(target) + "\n")
    # A valid split of the same form (the first lines of train).
    for language in ("de", "en"):
        text = (directory / f"train.{language}").read_text().splitlines()
        (directory / f"valid.{language}").write_text(
            "\n".join(text[:valid_lines]) + "\n"
        )


def _setup(tmp_path, **corpus):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _write_corpus(data_dir, 24, seed=0, **corpus)
    work_dir = tmp_path / "work"
    tokenizer = BertWordPieceTokenizer(BERT_VOCABULARY, lowercase=True)
    texts = (data_dir / "train.de").read_text().splitlines() + (
        data_dir / "train.en"
    ).read_text().splitlines()
    TaskVocabulary.build(tokenizer, texts).save(str(work_dir / "vocab"))
    return str(data_dir), str(work_dir)


@pytest.fixture()
def setup(tmp_path):
    return _setup(tmp_path)


def _run(data_dir, work_dir, **kwargs):
    teacher_fn = functools.partial(
        CMLMTeacher.from_scratch,
        vocabulary_size=len(BERT_VOCABULARY),
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=16,
    )
    settings = dict(
        task=Task(
            data_dir, "de", "en", max_source_length=8, max_target_length=8
        ),
        work_dir=work_dir,
        teacher_fn=teacher_fn,
        max_sequence_length=16,
        tokens_per_batch=64,
        total_steps=4,
        peak_learning_rate=1e-3,
        checkpoint_every_steps=2,
        validate_every_steps=4,
        verbose=0,
    )
    settings.update(kwargs)
    return train_teacher.run(**settings)


def test_resume_after_crash_continues_step_count(setup, monkeypatch):
    data_dir, work_dir = setup
    real_fit = trainer.fit_resumable

    class CrashAtStep(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) == 3:
                raise _Crash()

    def crashing_fit(model, train_dataset_fn, **kwargs):
        return real_fit(
            model, train_dataset_fn, callbacks=[CrashAtStep()], **kwargs
        )

    monkeypatch.setattr(trainer, "fit_resumable", crashing_fit)
    with pytest.raises(_Crash):
        _run(data_dir, work_dir)
    monkeypatch.setattr(trainer, "fit_resumable", real_fit)
    teacher_dir = os.path.join(work_dir, "teacher")
    assert tf.train.latest_checkpoint(
        os.path.join(teacher_dir, "checkpoints")
    ).endswith("ckpt-2")
    assert not os.path.exists(os.path.join(teacher_dir, "final.weights.h5"))

    result = _run(data_dir, work_dir)  # The same command again.
    assert result["step"] == 4
    assert result["output_dir"] == os.path.join(work_dir, "teacher")
    with open(os.path.join(teacher_dir, "history.jsonl")) as f:
        history = [json.loads(line) for line in f]
    assert [h["step"] for h in history] == [2, 4]
    assert "val_accuracy" not in history[0]
    assert {"val_accuracy", "val_token_loss"} <= set(history[-1])
    assert os.path.isdir(os.path.join(teacher_dir, "logs"))

    # The saved teacher loads and predicts over the task vocabulary.
    vocab = TaskVocabulary.load(os.path.join(work_dir, "vocab"))
    teacher = train_teacher.load_teacher(teacher_dir)
    assert isinstance(teacher, CMLMTeacher)
    assert teacher.bert_ids == vocab.bert_ids.tolist()
    x, _, _ = CMLMPreprocessor(vocab.bert_ids, max_sequence_length=16)(
        {
            "id": tf.constant([0], tf.int64),
            "source_ids": tf.ragged.constant([[5, 6, 7]]),
            "target_ids": tf.ragged.constant([[8, 9]]),
        }
    )
    assert teacher(x).shape == (1, x["mask_positions"].shape[1], vocab.size)
    bf16 = train_teacher.load_teacher(teacher_dir, dtype="mixed_bfloat16")
    assert bf16.backbone.dtype_policy.name == "mixed_bfloat16"
    assert bf16(x).dtype == "float32"
    # It holds the trained weights (checkpoint at step 4), not fresh ones.
    reference = train_teacher.load_teacher(teacher_dir)
    checkpoint = tf.train.Checkpoint(model=reference)
    checkpoint.restore(
        tf.train.latest_checkpoint(os.path.join(teacher_dir, "checkpoints"))
    ).expect_partial()
    for a, b in zip(teacher.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)
    # The file is for inference: no optimizer state, no temporary left.
    import h5py

    with h5py.File(os.path.join(teacher_dir, "final.weights.h5")) as f:
        assert "optimizer" not in f and "layers" in f
    assert not [n for n in os.listdir(teacher_dir) if "tmp" in n]


def test_training_learns_and_saved_teacher_reproduces_validation(
    tmp_path, monkeypatch
):
    """On a word-by-word corpus, training lowers the validation masked-token
    loss well below the fresh teacher's and lifts accuracy far above it;
    the saved teacher gives the logged validation metrics again."""
    data_dir, work_dir = _setup(tmp_path, parallel=True, valid_lines=24)
    real_fit = trainer.fit_resumable
    seen = {}

    def fit_after_measuring(model, train_dataset_fn, **kwargs):
        seen["validation"] = kwargs["validation_dataset"]
        seen["initial"] = model.evaluate(
            kwargs["validation_dataset"], verbose=0, return_dict=True
        )
        return real_fit(model, train_dataset_fn, **kwargs)

    monkeypatch.setattr(trainer, "fit_resumable", fit_after_measuring)
    result = _run(
        data_dir,
        work_dir,
        total_steps=TRAIN_STEPS,
        checkpoint_every_steps=TRAIN_STEPS,
        validate_every_steps=TRAIN_STEPS,
        peak_learning_rate=1e-2,
        warmup_fraction=0.1,
    )
    initial, final = seen["initial"], result
    # Measured (seed 0): validation loss 2.77 -> 1.69, accuracy 0.16 ->
    # 0.43; a teacher that does not learn (or learns from the wrong labels)
    # stays near the first.
    assert final["val_token_loss"] < 0.7 * initial["token_loss"], (
        initial,
        final,
    )
    assert final["val_accuracy"] > initial["accuracy"] + 0.2, (initial, final)
    assert final["loss"] < 0.8 * initial["loss"], (initial, final)

    teacher = train_teacher.load_teacher(os.path.join(work_dir, "teacher"))
    train_teacher.compile_teacher(
        teacher, peak_learning_rate=1e-3, warmup_steps=0, total_steps=1
    )
    again = teacher.evaluate(seen["validation"], verbose=0, return_dict=True)
    assert again["accuracy"] == pytest.approx(final["val_accuracy"], abs=1e-6)
    assert again["token_loss"] == pytest.approx(
        final["val_token_loss"], rel=1e-5
    )


def test_optimizer_settings(setup):
    teacher = CMLMTeacher.from_scratch(
        bert_ids=np.arange(10),
        vocabulary_size=12,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
    )
    train_teacher.compile_teacher(
        teacher, peak_learning_rate=5e-5, warmup_steps=5, total_steps=100
    )
    optimizer = teacher.optimizer
    assert isinstance(optimizer, FusedAdam)
    assert optimizer.weight_decay == pytest.approx(0.01)
    assert optimizer.global_clipnorm == pytest.approx(1.0)
    decayed = {
        v.path
        for v in teacher.trainable_variables
        if optimizer._use_weight_decay(v)
    }
    assert "mlm_output_dense/kernel" in decayed
    assert not any(
        name.endswith(("bias", "gamma", "beta")) for name in decayed
    ), decayed
    schedule = optimizer._learning_rate  # The schedule object.
    assert float(schedule(5)) == pytest.approx(5e-5)
    assert float(schedule(100)) == pytest.approx(0.0)


TEACHER_WORKER_SCRIPT = """
import json, sys
import numpy as np
import tensorflow as tf
sys.path.insert(0, sys.argv[1])
from bertkd_tf.training.strategy import get_strategy
strategy = get_strategy("multi_worker")
import keras
from tests.models.cmlm_teacher_test import BERT_IDS, _inputs, _tiny_teacher
from bertkd_tf.runs.train_teacher import compile_teacher
x = _inputs(batch=4)
rng = np.random.default_rng(1)
y = rng.integers(5, len(BERT_IDS), (4, 3)).astype("int32")
w = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], "float32")
options = tf.data.Options()
options.experimental_distribute.auto_shard_policy = (
    tf.data.experimental.AutoShardPolicy.OFF)
ds = tf.data.Dataset.from_tensors((x, y, w)).repeat().with_options(options)
with strategy.scope():
    teacher = _tiny_teacher()
    compile_teacher(teacher, peak_learning_rate=1e-2, warmup_steps=1,
                    total_steps=10)
    teacher(x)
hist = teacher.fit(ds, steps_per_epoch=3, verbose=0).history
np.savez(sys.argv[2], *[v.numpy() for v in teacher.weights])
print(json.dumps(hist))
"""


@pytest.mark.slow
def test_teacher_trains_on_two_workers_and_they_agree(tmp_path):
    """MultiWorkerMirroredStrategy (two local processes) for the teacher."""
    from tests.models.cmlm_teacher_test import _tiny_teacher
    from tests.training.distillation_model_test import (
        assert_workers_agree,
        run_two_workers,
    )

    outputs, files = run_two_workers(
        TEACHER_WORKER_SCRIPT, tmp_path, timeout=300
    )
    assert_workers_agree(
        outputs, files, [v.numpy() for v in _tiny_teacher().weights]
    )


# --- Gradient accumulation and XLA (issue 18 point 9) ----------------------


def test_accumulating_two_batches_equals_one_batch_of_both():
    """`gradient_accumulation_steps=2`: after two half batches the teacher
    has the weights one update on the whole batch gives (same mask count
    in each half, so the mean of the two means is the mean); after the
    first half nothing moved."""
    from tests.models.cmlm_teacher_test import BERT_IDS, _inputs, _tiny_teacher

    x = _inputs(batch=4)
    rng = np.random.default_rng(1)
    y = rng.integers(5, len(BERT_IDS), (4, 3)).astype("int32")
    w = np.ones((4, 3), "float32")

    def half(value, i):
        return value[2 * i : 2 * i + 2]

    def trained(accumulation):
        teacher = _tiny_teacher(dropout=0.0)
        train_teacher.compile_teacher(
            teacher,
            peak_learning_rate=1e-2,
            warmup_steps=0,
            total_steps=10,
            gradient_accumulation_steps=accumulation,
        )
        teacher(x)
        initial = [v.numpy() for v in teacher.trainable_weights]
        if accumulation:
            for i in range(2):
                teacher.train_on_batch(
                    {k: half(v, i) for k, v in x.items()},
                    half(y, i),
                    sample_weight=half(w, i),
                )
                if i == 0:
                    for a, b in zip(initial, teacher.trainable_weights):
                        np.testing.assert_array_equal(a, b.numpy())
        else:
            # One update on the whole batch, its gradients made dense: the
            # token embedding's is a `tf.IndexedSlices`, and Keras' Adam
            # adds the squares of a repeated row's slices into the second
            # moment instead of the square of their sum (what the summed,
            # dense gradient of an accumulation gives).
            with tf.GradientTape() as tape:
                loss = teacher.compute_loss(
                    x, y, teacher(x, training=True), w, training=True
                )
            gradients = tape.gradient(loss, teacher.trainable_weights)
            teacher.optimizer.apply(
                [tf.convert_to_tensor(g) for g in gradients],
                teacher.trainable_weights,
            )
        assert int(teacher.optimizer.iterations.numpy()) == 1
        return initial, [v.numpy() for v in teacher.trainable_weights]

    initial, accumulated = trained(2)
    _, whole = trained(None)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(initial, whole))
    assert moved > 1e-3
    for a, b in zip(accumulated, whole):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


class _Compiled(Exception):
    pass


def test_accumulation_and_xla_settings_reach_the_teacher(setup, monkeypatch):
    """`train_teacher.run(gradient_accumulation_steps=4, jit_compile=True)`
    compiles the teacher with them (checked at the start of training)."""
    data_dir, work_dir = setup
    seen = {}

    def stop_at_fit(model, train_dataset_fn, **kwargs):
        seen["accumulation"] = model.optimizer.gradient_accumulation_steps
        seen["jit_compile"] = model.jit_compile
        seen["plot_metrics"] = kwargs["plot_metrics"]
        raise _Compiled()

    monkeypatch.setattr(trainer, "fit_resumable", stop_at_fit)
    with pytest.raises(_Compiled):
        _run(
            data_dir, work_dir, gradient_accumulation_steps=4, jit_compile=True
        )
    assert seen == {
        "accumulation": 4,
        "jit_compile": True,
        "plot_metrics": ("val_accuracy",),
    }
    with pytest.raises(_Compiled):
        _run(data_dir, work_dir, gradient_accumulation_steps=1)
    assert seen["accumulation"] is None and seen["jit_compile"] is False


def test_teacher_run_draws_its_validation_accuracy(setup):
    data_dir, work_dir = setup
    _run(data_dir, work_dir, gradient_accumulation_steps=2)
    teacher_dir = os.path.join(work_dir, "teacher")
    with open(os.path.join(teacher_dir, "valid_accuracy.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    history = [
        json.loads(line)
        for line in open(os.path.join(teacher_dir, "history.jsonl"))
    ]
    assert history[-1]["step"] == 4 and "val_accuracy" in history[-1]


@pytest.mark.parametrize(
    "bucket_step, boundaries",
    [(4, [4, 8, 12, 16]), (None, [8, 12, 16])],
)
def test_bucket_step_sets_the_length_buckets(
    setup, tmp_path, monkeypatch, bucket_step, boundaries
):
    """`bucket_step` reaches the batcher: a bucket every n packed tokens,
    or the default ladder; a batch holds pairs of one bucket only."""
    data_dir, work_dir = setup
    seen = {}
    original = train_teacher.make_datasets

    def spy(preprocessor, batcher, *args, **kwargs):
        seen["boundaries"] = batcher.bucket_boundaries
        train_fn, valid = original(preprocessor, batcher, *args, **kwargs)
        seen["buckets"] = [
            set(
                np.searchsorted(
                    batcher.bucket_boundaries,
                    np.sum(x["padding_mask"], axis=1),
                ).tolist()
            )
            for x, _, _ in train_fn(0).take(20).as_numpy_iterator()
        ]
        return train_fn, valid

    monkeypatch.setattr(train_teacher, "make_datasets", spy)
    _run(data_dir, work_dir, bucket_step=bucket_step, total_steps=1)
    assert seen["boundaries"] == boundaries
    assert all(len(buckets) == 1 for buckets in seen["buckets"])

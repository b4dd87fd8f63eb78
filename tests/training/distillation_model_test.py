"""Tests of DistillationModel: loss, metrics, teacher, replicas, workers."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from bertkd_tf.losses.token_cross_entropy import TokenCrossEntropy
from bertkd_tf.losses.top_k_distillation_loss import TopKDistillationLoss
from bertkd_tf.training.distillation_model import DistillationModel
from tests.testing import tiny_transformer_student

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
VOCAB, B, S, T, K = 40, 4, 5, 6, 3


def make_student(seed=1):
    return tiny_transformer_student(VOCAB, seed)


def make_data(seed=0):
    rng = np.random.default_rng(seed)
    x = {
        "encoder_token_ids": rng.integers(5, VOCAB, (B, S)).astype("int32"),
        "encoder_padding_mask": np.ones((B, S), "int32"),
        "decoder_token_ids": rng.integers(5, VOCAB, (B, T)).astype("int32"),
        "decoder_padding_mask": np.ones((B, T), "int32"),
    }
    x["decoder_padding_mask"][:, 4:] = 0
    y = {
        "labels": rng.integers(5, VOCAB, (B, T)).astype("int32"),
        "teacher_ids": rng.integers(0, VOCAB, (B, T, K)).astype("int32"),
        "teacher_logits": rng.normal(size=(B, T, K)).astype("float32") * 3,
    }
    weights = x["decoder_padding_mask"].astype("float32")
    return x, y, weights


def test_loss_is_weighted_sum_and_metrics_logged():
    x, y, weights = make_data()
    model = DistillationModel(
        make_student(), distillation_weight=0.3, temperature=2.0
    )
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    scores = model.evaluate(
        tf.data.Dataset.from_tensors((x, y, weights)),
        return_dict=True,
        verbose=0,
    )
    logits = model.student(x)
    xent = float(TokenCrossEntropy(0.1)(y["labels"], logits, weights))
    kd = float(TopKDistillationLoss(2.0)(y, logits, weights))
    assert scores["xent"] == pytest.approx(xent, rel=1e-5)
    assert scores["kd"] == pytest.approx(kd, rel=1e-5)
    assert scores["loss"] == pytest.approx(0.7 * xent + 0.3 * kd, rel=1e-5)


def test_logged_means_keep_the_weighted_sum_over_uneven_batches():
    # Token-budget batches hold different numbers of rows; Keras weights
    # its `loss` tracker by rows, so xent and kd must be weighted the same
    # for the epoch means to keep loss = (1 - w) xent + w kd.
    x, y, weights = make_data()
    model = DistillationModel(
        make_student(), distillation_weight=0.3, temperature=2.0
    )
    model.compile(optimizer=keras.optimizers.SGD(0.0))

    def part(rows):
        return (
            {k: v[rows] for k, v in x.items()},
            {k: v[rows] for k, v in y.items()},
            weights[rows],
        )

    batches = [part(slice(0, 3)), part(slice(3, 4))]
    expected = {"xent": 0.0, "kd": 0.0}
    for bx, by, bw in batches:
        logits = model.student(bx)
        rows = len(bw)
        expected["xent"] += rows * float(
            TokenCrossEntropy(0.1)(by["labels"], logits, bw)
        )
        expected["kd"] += rows * float(
            TopKDistillationLoss(2.0)(by, logits, bw)
        )
    expected = {k: v / 4 for k, v in expected.items()}
    dataset = tf.data.Dataset.from_tensors(batches[0]).concatenate(
        tf.data.Dataset.from_tensors(batches[1])
    )
    scores = model.evaluate(dataset, return_dict=True, verbose=0)
    assert scores["xent"] == pytest.approx(expected["xent"], rel=1e-5)
    assert scores["kd"] == pytest.approx(expected["kd"], rel=1e-5)
    assert scores["loss"] == pytest.approx(
        0.7 * scores["xent"] + 0.3 * scores["kd"], rel=1e-6
    )


def test_weight_zero_is_exactly_cross_entropy():
    x, y, weights = make_data()
    # Unfused: the loss is TokenCrossEntropy itself, bit for bit.
    model = DistillationModel(
        make_student(), distillation_weight=0.0, fuse_output_layer=False
    )
    logits = model(x)
    loss = model.compute_loss(x, y, logits, weights)
    xent = TokenCrossEntropy(0.1)(y["labels"], logits, weights)
    assert float(loss) == float(xent)  # Exactly, not approximately.
    # Fused (the default): the loss is exactly the logged cross-entropy (no
    # distillation term mixed in), equal to TokenCrossEntropy up to float32
    # rounding of the fused softmax.
    model = DistillationModel(make_student(), distillation_weight=0.0)
    logits = model(x)
    loss = model.compute_loss(x, y, logits, weights)
    assert float(loss) == float(model.xent_tracker.result())
    assert float(model.kd_tracker.count) == 0.0
    xent = TokenCrossEntropy(0.1)(y["labels"], logits, weights)
    assert float(loss) == pytest.approx(float(xent), rel=1e-5)
    # Labels alone are enough for the baseline; kd is not logged.
    model.compile(optimizer="sgd")
    history = model.fit(
        tf.data.Dataset.from_tensors((x, y["labels"], weights)).repeat(),
        steps_per_epoch=2,
        verbose=0,
    )
    assert set(history.history) == {"loss", "xent"}
    assert history.history["loss"] == history.history["xent"]


def test_padding_never_counts():
    x, y, weights = make_data()
    model = DistillationModel(make_student(), distillation_weight=0.5)
    logits = model(x)
    base = float(model.compute_loss(x, y, logits, weights))
    changed = {k: v.copy() for k, v in y.items()}
    changed["labels"][:, 4:] = 7
    changed["teacher_logits"][:, 4:] = 1e3
    assert float(model.compute_loss(x, changed, logits, weights)) == (
        pytest.approx(base)
    )


def test_offline_distillation_needs_targets():
    x, y, weights = make_data()
    model = DistillationModel(make_student(), distillation_weight=0.5)
    with pytest.raises(ValueError, match="teacher_ids"):
        model.compute_loss(x, y["labels"], model(x), weights)


def make_teacher():
    """A tiny stand-in teacher: token ids -> logits [B, T, V]."""
    keras.utils.set_random_seed(7)
    ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    h = keras.layers.Embedding(VOCAB, 8)(ids)
    logits = keras.layers.Dense(VOCAB)(h)
    return keras.Model(ids, logits, name="stand_in_teacher")


def test_online_teacher_is_frozen_and_used():
    x, y, weights = make_data()
    teacher = make_teacher()
    before = [w.numpy().copy() for w in teacher.weights]
    x = dict(x, teacher_inputs=y["labels"])
    model = DistillationModel(
        make_student(),
        distillation_weight=0.5,
        temperature=2.0,
        teacher=teacher,
        top_k=4,
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = model.fit(
        tf.data.Dataset.from_tensors((x, y["labels"], weights)).repeat(),
        steps_per_epoch=3,
        verbose=0,
    )
    assert set(history.history) == {"loss", "xent", "kd"}
    for w, b in zip(teacher.weights, before):
        np.testing.assert_array_equal(w.numpy(), b)
    assert all(
        not any(w is t for t in teacher.weights)
        for w in model.trainable_weights
    )
    # The online kd equals the offline kd with the teacher's top-K.
    logits = model(x)
    full = np.asarray(teacher(y["labels"]))
    ids = np.argsort(-full, -1)[..., :4]
    offline = {
        "teacher_ids": ids,
        "teacher_logits": np.take_along_axis(full, ids, -1),
    }
    expected = TopKDistillationLoss(2.0)(offline, logits, weights)
    model.kd_tracker.reset_state()
    model.compute_loss(x, y["labels"], logits, weights)
    assert float(model.kd_tracker.result()) == pytest.approx(
        float(expected), rel=1e-5
    )


def test_serialization_round_trip(tmp_path):
    model = DistillationModel(
        make_student(),
        distillation_weight=0.5,
        temperature=10.0,
        label_smoothing=0.2,
        distillation_form="hinton",
        teacher=make_teacher(),
        top_k=5,
        fuse_output_layer=False,
    )
    x, _, _ = make_data()
    x = dict(x, teacher_inputs=x["decoder_token_ids"])
    expected = model(x)
    clone = DistillationModel.from_config(model.get_config())
    for key in (
        "distillation_weight",
        "temperature",
        "label_smoothing",
        "distillation_form",
        "top_k",
        "fuse_output_layer",
    ):
        assert getattr(clone, key) == getattr(model, key)
    assert clone.teacher is not None and not clone.teacher.trainable
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(restored(x), expected, rtol=1e-6)


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts calls of the fused output layer (traces, in graph mode) and
    records the number of tokens each call computed logits for."""
    from bertkd_tf.training import distillation_model

    calls = []
    original = distillation_model.tied_output_cross_entropies

    def spy(hidden, embeddings, targets):
        calls.append(hidden.shape[0])
        return original(hidden, embeddings, targets)

    monkeypatch.setattr(distillation_model, "tied_output_cross_entropies", spy)
    return calls


def fit_history_and_weights(model, data, steps=3, **compile_kwargs):
    # SGD: Adam would turn rounding-level gradient differences of weights
    # with near-zero gradients into full-size steps.
    model.compile(optimizer=keras.optimizers.SGD(0.5), **compile_kwargs)
    history = model.fit(
        tf.data.Dataset.from_tensors(data).repeat(),
        steps_per_epoch=steps,
        verbose=0,
    ).history
    return history, [w.numpy() for w in model.student.weights]


@pytest.mark.parametrize("weight", [0.0, 0.3])
def test_fused_output_layer_trains_as_the_logits_path(fused_calls, weight):
    x, y, weights = make_data()
    runs = {}
    for fuse in (False, True):
        model = DistillationModel(
            make_student(),
            distillation_weight=weight,
            temperature=2.0,
            fuse_output_layer=fuse,
        )
        assert model.output_layer_fusable == fuse
        runs[fuse] = fit_history_and_weights(model, (x, y, weights))
        assert bool(fused_calls) == fuse
    (plain, plain_weights), (fused, fused_weights) = runs[False], runs[True]
    assert set(fused) == set(plain)
    for key in plain:
        np.testing.assert_allclose(fused[key], plain[key], rtol=1e-5)
    for a, b in zip(fused_weights, plain_weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_fused_output_layer_computes_no_logits_for_padding(fused_calls):
    x, y, weights = make_data()
    model = DistillationModel(make_student(), distillation_weight=0.5)
    model.compute_loss(x, y, model(x), weights)
    assert fused_calls == [int(weights.sum())] and weights.sum() < B * T


def test_fused_output_layer_under_xla_equals_graph_mode(fused_calls):
    x, y, weights = make_data()
    runs = [
        fit_history_and_weights(
            DistillationModel(make_student(), 0.5, temperature=2.0),
            (x, y, weights),
            jit_compile=jit_compile,
        )
        for jit_compile in (False, True)
    ]
    # Graph mode gathers the real tokens (a dynamic count); XLA keeps every
    # position (static shapes), padding weighted 0.
    assert set(fused_calls) == {None, B * T}
    for key in runs[0][0]:
        np.testing.assert_allclose(runs[1][0][key], runs[0][0][key], rtol=1e-5)
    for a, b in zip(runs[1][1], runs[0][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_logits_from_elsewhere_and_hinton_form_use_the_logits(fused_calls):
    x, y, weights = make_data()
    model = DistillationModel(make_student(), 0.3, temperature=2.0)
    logits = model.student(x)  # Not this model's call: no decoder states.
    xent = float(TokenCrossEntropy(0.1)(y["labels"], logits, weights))
    kd = float(TopKDistillationLoss(2.0)(y, logits, weights))
    loss = model.compute_loss(x, y, logits, weights)
    assert float(loss) == pytest.approx(0.7 * xent + 0.3 * kd, rel=1e-6)
    hinton = DistillationModel(
        make_student(), 0.3, temperature=2.0, distillation_form="hinton"
    )
    logits = hinton(x)
    xent = float(TokenCrossEntropy(0.1)(y["labels"], logits, weights))
    kd = float(TopKDistillationLoss(2.0, form="hinton")(y, logits, weights))
    loss = hinton.compute_loss(x, y, logits, weights)
    assert float(loss) == pytest.approx(0.7 * xent + 0.3 * kd, rel=1e-6)
    assert fused_calls == []


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="distillation_weight=1.5"):
        DistillationModel(make_student(), distillation_weight=1.5)
    with pytest.raises(ValueError, match="top_k=0"):
        DistillationModel(make_student(), top_k=0)


# --- Distribution (subprocesses: devices must be set before TF starts) ----

REPLICA_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np
    sys.path.insert(0, sys.argv[1])
    from tests.training.distillation_model_test import make_data, make_student
    from bertkd_tf.training.distillation_model import DistillationModel

    def train(strategy):
        x, y, w = make_data()
        # Same real-token count in each half: per-replica means average to
        # the global mean exactly.
        ds = tf.data.Dataset.from_tensors((x, y, w)).repeat()
        with strategy.scope():
            model = DistillationModel(make_student(), 0.5, temperature=2.0)
            # SGD, not Adam: Adam would hide doubled gradients.
            model.compile(optimizer=keras.optimizers.SGD(0.5))
        hist = model.fit(ds, steps_per_epoch=4, verbose=0).history
        weights = [v.numpy() for v in model.student.weights]
        return hist, weights

    fused = []
    original = DistillationModel._fused_losses
    def spy(self, *args):
        fused.append(1)
        return original(self, *args)
    DistillationModel._fused_losses = spy
    one = train(tf.distribute.OneDeviceStrategy("/cpu:0"))
    two = train(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    diff = max(float(np.abs(a - b).max()) for a, b in zip(one[1], two[1]))
    init = [v.numpy() for v in make_student().weights]
    moved = max(float(np.abs(a - b).max()) for a, b in zip(one[1], init))
    print(json.dumps({"one": one[0], "two": two[0], "max_weight_diff": diff,
                      "moved": moved, "fused_traces": len(fused)}))
    """
)


def run_script(script, args=(), env=None, timeout=240):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    return subprocess.Popen(
        [sys.executable, "-c", script, REPO, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


@pytest.mark.slow
def test_one_and_two_replicas_agree():
    proc = run_script(REPLICA_SCRIPT)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    for key in ("loss", "xent", "kd"):
        assert result["two"][key] == pytest.approx(result["one"][key], 1e-5)
    assert result["moved"] > 1e-2
    assert result["max_weight_diff"] < 1e-5
    # The fused output layer ran (once per trace: 1 + 2 replicas).
    assert result["fused_traces"] >= 3


WORKER_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf
    sys.path.insert(0, sys.argv[1])
    from bertkd_tf.training.strategy import get_strategy
    strategy = get_strategy("multi_worker")
    import keras
    from tests.training.distillation_model_test import make_data, make_student
    from bertkd_tf.training.distillation_model import DistillationModel
    x, y, w = make_data()
    ds = tf.data.Dataset.from_tensors((x, y, w)).repeat()
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF)
    ds = ds.with_options(options)
    with strategy.scope():
        model = DistillationModel(make_student(), 0.5, temperature=2.0)
        model.compile(optimizer=keras.optimizers.Adam(1e-2))
        model(x)  # Built models skip Keras' symbolic build (see the model).
    hist = model.fit(ds, steps_per_epoch=3, verbose=0).history
    np.savez(sys.argv[2], *[v.numpy() for v in model.student.weights])
    print(json.dumps(hist))
    """
)


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_two_workers(script, tmp_path, timeout=240):
    """Runs `script` as two local workers of a MultiWorkerMirroredStrategy
    cluster (TF_CONFIG on 127.0.0.1; argv[2] = `tmp_path/w{index}.npz`).
    Returns the JSON of each worker's last output line and the two npz
    files, after both exited with status 0."""
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        tf_config = {
            "cluster": cluster,
            "task": {"type": "worker", "index": index},
        }
        procs.append(
            run_script(
                script,
                args=[str(tmp_path / f"w{index}.npz")],
                env={"TF_CONFIG": json.dumps(tf_config)},
            )
        )
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, err[-3000:]
            outputs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return outputs, [np.load(tmp_path / f"w{index}.npz") for index in range(2)]


def assert_workers_agree(outputs, files, initial_weights):
    """Both workers logged the same losses, ended with the same weights, and
    those moved away from `initial_weights` (the model's, in order)."""
    assert outputs[0]["loss"] == pytest.approx(outputs[1]["loss"])
    w0, w1 = files
    assert len(w0.files) == len(w1.files) > 0
    for key in w0.files:
        np.testing.assert_allclose(w0[key], w1[key], rtol=1e-6, atol=1e-7)
    moved = max(
        np.abs(w0[f"arr_{i}"] - v).max() for i, v in enumerate(initial_weights)
    )
    assert moved > 1e-3


@pytest.mark.slow
def test_two_workers_agree(tmp_path):
    outputs, files = run_two_workers(WORKER_SCRIPT, tmp_path)
    assert_workers_agree(
        outputs, files, [v.numpy() for v in make_student().weights]
    )

"""FusedAdam equals Keras' Adam/AdamW, alone and under MirroredStrategy."""

import json
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from bertkd_tf.training.fused_adam import FusedAdam
from bertkd_tf.training.schedules import NoamSchedule
from tests.training.distillation_model_test import run_script

SHAPES = [(7, 5), (5,), (3, 4, 2), ()]


def run_steps(optimizer, steps=6, sparse=False):
    rng = np.random.default_rng(0)
    variables = [
        keras.Variable(rng.normal(size=s).astype("float32"), name=f"v{i}")
        for i, s in enumerate(SHAPES)
    ]
    variables.append(keras.Variable(np.ones((3,), "float32"), name="bias"))
    optimizer.build(variables)

    @tf.function
    def step(grads):
        optimizer.apply(grads, variables)

    for _ in range(steps):
        grads = [
            tf.constant(rng.normal(size=v.shape).astype("float32"))
            for v in variables
        ]
        if sparse:
            rows = tf.constant([0, 3, 3])
            grads[0] = tf.IndexedSlices(
                tf.gather(grads[0], rows), rows, tf.constant([7, 5])
            )
        step(grads)
    return [v.numpy() for v in variables], optimizer


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(learning_rate=1e-2, beta_2=0.98, epsilon=1e-9),
        dict(
            learning_rate=NoamSchedule(2.0, 16, 4),
            global_clipnorm=0.5,
        ),
        dict(learning_rate=1e-2, weight_decay=0.1),
        dict(learning_rate=1e-2, gradient_accumulation_steps=2),
        dict(learning_rate=1e-2, amsgrad=True),
    ],
)
def test_equals_keras_adam(kwargs):
    # Up to rounding: the kernel computes 1 - beta in float32, Keras in
    # Python (1 - 0.999: 1.3e-5 apart relatively), which moves v by as much.
    want, keras_adam = run_steps(keras.optimizers.Adam(**kwargs))
    got, fused = run_steps(FusedAdam(**kwargs))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)
    for a, b in zip(fused.variables, keras_adam.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)
    assert int(fused.iterations) == int(keras_adam.iterations)


def test_sparse_gradients_and_excluded_decay_equal_adamw():
    def adamw(cls):
        opt = cls(learning_rate=1e-2, weight_decay=0.1)
        opt.exclude_from_weight_decay(var_names=["bias"])
        return opt

    want, _ = run_steps(adamw(keras.optimizers.AdamW), sparse=True)
    got, _ = run_steps(adamw(FusedAdam), sparse=True)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)
    # The excluded bias moved by Adam alone (it would also decay otherwise).
    plain, _ = run_steps(FusedAdam(learning_rate=1e-2), sparse=True)
    np.testing.assert_allclose(got[-1], plain[-1], rtol=1e-6)
    assert not np.allclose(got[0], plain[0])


def test_serializes():
    optimizer = FusedAdam(learning_rate=3e-4, beta_2=0.98, epsilon=1e-9)
    restored = keras.optimizers.deserialize(
        keras.optimizers.serialize(optimizer)
    )
    assert type(restored) is FusedAdam
    assert restored.get_config() == optimizer.get_config()


MIRRORED_SCRIPT = textwrap.dedent(
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
    from bertkd_tf.training.fused_adam import FusedAdam

    def train(strategy, optimizer_class, beta_2=0.98):
        x, y, w = make_data()
        ds = tf.data.Dataset.from_tensors((x, y, w)).repeat()
        with strategy.scope():
            model = DistillationModel(make_student(), 0.5, temperature=2.0)
            model.compile(optimizer=optimizer_class(1e-2, beta_2=beta_2))
        model.fit(ds, steps_per_epoch=3, verbose=0)
        return [v.numpy() for v in model.student.weights]

    mirrored = lambda: tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    one = lambda: tf.distribute.OneDeviceStrategy("/cpu:0")
    keras_one = train(one(), keras.optimizers.Adam)
    keras_two = train(mirrored(), keras.optimizers.Adam)
    fused_one = train(one(), FusedAdam)
    fused_two = train(mirrored(), FusedAdam)
    # Keras' Adam against itself with beta_2 rounded to float32: how far
    # rounding alone carries these weights in three steps.
    keras_rounded = train(
        one(), keras.optimizers.Adam, beta_2=float(np.float32(0.98)))
    init = [v.numpy() for v in make_student().weights]
    diff = lambda p, q: max(float(np.abs(a - b).max()) for a, b in zip(p, q))
    print(json.dumps({"moved": diff(fused_two, init),
                      "rounding": diff(keras_rounded, keras_one),
                      "fused_vs_keras_one": diff(fused_one, keras_one),
                      "fused_vs_keras_two": diff(fused_two, keras_two),
                      "keras_two_vs_one": diff(keras_two, keras_one),
                      "fused_two_vs_one": diff(fused_two, fused_one)}))
    """
)


@pytest.mark.slow
def test_mirrored_equals_keras_adam_and_one_replica():
    proc = run_script(MIRRORED_SCRIPT)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["moved"] > 1e-2
    # Rounding-level differences, which three Adam steps through the model
    # amplify (~5e-5): the same size as Keras against itself.
    bound = 3 * result["rounding"] + 1e-6
    assert result["rounding"] < 1e-3
    assert result["fused_vs_keras_one"] <= bound
    assert result["fused_vs_keras_two"] <= bound
    assert result["fused_two_vs_one"] <= 3 * result["keras_two_vs_one"] + 1e-6

"""Analytic FLOP counts of the project's models, from the code's shapes.

Two FLOPs a multiply-add; training = 3x the forward pass (forward, and the
two products of the backward pass); only matmuls and attention products
are counted (layer norms, softmax, GELU and the optimizer are a few percent
at these sizes). Shared by `bench_train.py`, `cost_model.py` and the tests,
which check the parameter formulas against built models.

- Student (`TransformerSeq2SeqBackbone`, `TransformerSeq2Seq`): `layers`
  encoder and `layers` decoder layers of width `d`, feedforward `f`, an
  output layer tied to the `vocab`-row embedding, sinusoidal positions.
- Teacher (`CMLMTeacher`, a BERT encoder): `layers` layers of width `d`,
  feedforward `f`, over the packed `[CLS] source [SEP] target [SEP]`; its
  head (dense d x d, then the task vocabulary) runs only at the masked
  positions.
"""

import time


def student_matmul_params(d, f, layers):
    """Weights that multiply activations, per encoder and decoder layer
    summed: `(encoder, decoder)` (no biases, norms or embeddings)."""
    encoder = layers * (4 * d * d + 2 * d * f)
    decoder = layers * (8 * d * d + 2 * d * f)
    return encoder, decoder


def training_flops(d, f, layers, heads, vocab, batch, source, target):
    """Analytic training FLOPs of one student step (3x forward) over
    `batch` pairs of `source` and `target` tokens."""
    del heads
    encoder = layers * source * (4 * d * d + 2 * d * f + 2 * source * d)
    decoder = layers * (
        target * (4 * d * d + 2 * target * d)  # self-attention
        + target * 2 * d * d  # cross-attention Q and output
        + source * 2 * d * d  # cross-attention K and V
        + target * 2 * source * d  # cross-attention scores
        + target * 2 * d * f  # feedforward
    )
    output = target * d * vocab
    return 3 * 2 * batch * (encoder + decoder + output)


def student_decode_flops(d, f, layers, vocab, source, target, beam=1):
    """Forward FLOPs of decoding `target` tokens from a `source`-token input
    with a cache: the encoder once, then one token per step on each of
    `beam` hypotheses (attention over the cache grows with the step)."""
    encoder = layers * source * (4 * d * d + 2 * d * f + 2 * source * d)
    per_token = (
        layers
        * (
            4 * d * d  # self-attention projections of the new token
            + 2 * d * d  # cross-attention Q and output
            + 2 * d * f
        )
        + d * vocab
    )
    attention = layers * sum(
        2 * (t + 1) * d + 2 * source * d for t in range(target)
    )
    cross_kv = layers * source * 2 * d * d
    return 2 * (encoder + cross_kv + beam * (target * per_token + attention))


def teacher_matmul_params(d, f, layers):
    """Weights of the BERT encoder that multiply activations."""
    return layers * (4 * d * d + 2 * d * f)


def teacher_forward_flops(d, f, layers, vocab, length, masked):
    """Forward FLOPs of one packed sequence of `length` tokens with
    `masked` positions through the head (dense d x d + task vocabulary)."""
    encoder = layers * length * (4 * d * d + 2 * d * f + 2 * length * d)
    head = masked * (d * d + d * vocab)
    return 2 * (encoder + head)


def teacher_training_flops(d, f, layers, vocab, length, masked):
    """Training FLOPs of one packed sequence (3x forward)."""
    return 3 * teacher_forward_flops(d, f, layers, vocab, length, masked)


def dump_flops(d, f, layers, vocab, source, target, passes):
    """Forward FLOPs of dumping one pair of `source` and `target` tokens:
    `min(passes, target + 1)` circular-masked copies of the packed
    sequence (`source + target + 3` tokens: [CLS], two [SEP]), every one
    of the `target + 1` slots (the EOS slot included) through the head
    once."""
    rows = target + 1
    copies = min(passes, rows)
    length = source + target + 3
    return copies * teacher_forward_flops(
        d, f, layers, vocab, length, 0
    ) + 2 * rows * (d * d + d * vocab)


def matmul_ceiling(dtype, n=2048, repeats=10):
    """FLOP/s of an n x n x n matmul in a tf.function (graph mode): the
    ceiling that model FLOP utilisation (MFU) is measured against."""
    import tensorflow as tf

    a = tf.random.normal([n, n], dtype="float32")
    # Scaled so that repeated products keep unit magnitude.
    b = tf.random.normal([n, n], dtype="float32") / n**0.5
    a, b = tf.cast(a, dtype), tf.cast(b, dtype)

    @tf.function
    def chain(a, b):
        # Each product feeds the next: `repeats` matmuls really run. (A
        # chain of identical `matmul(a, b)` nodes is merged into one by
        # Grappler's common-subexpression elimination, which made the
        # ceiling read `repeats` times too high before session 3.)
        out = a
        for _ in range(repeats):
            out = tf.matmul(out, b)
        return out

    chain(a, b).numpy()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        chain(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 * repeats / best


def print_matmul_ceilings(policies):
    """`{policy: FLOP/s}` of the matmul ceiling of each dtype policy name
    (`"float32"`, `"mixed_bfloat16"`, ...: bfloat16 where the name says so),
    measured now and printed on one line, for the benches' MFU columns."""
    ceilings = {
        policy: matmul_ceiling(
            "bfloat16" if "bfloat16" in policy else "float32"
        )
        for policy in policies
    }
    print(
        "matmul ceiling (2048^3): "
        + ", ".join(f"{p} {c / 1e12:.2f} TFLOP/s" for p, c in ceilings.items())
    )
    return ceilings

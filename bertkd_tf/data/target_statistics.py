"""Statistics of the teacher's soft targets against the references.

How sharp the stored top-K targets are at a temperature T, and how much of
their mass lands on the reference token: what `tools/target_stats.py`
prints, and its rule for choosing T and K on the valid split (the lowest
reference NLL, i.e. the best-calibrated soft targets); and `agreement`, how
much the teacher knows that a left-to-right student does not (its first
choice against the student's teacher-forced first choice, position by
position, from `student_rows`).
"""

import numpy as np
import tensorflow as tf

from bertkd_tf.data.student_features import student_example, to_keras_inputs
from bertkd_tf.errors import ArtifactError


def aligned_rows(targets, pairs, eos_id, max_pairs=None):
    """`(reference [N], top_ids [N, K], top_logits [N, K])` over the target
    positions of `pairs` (target tokens, then EOS), row-aligned with the
    teacher's rows."""
    references, ids, logits = [], [], []
    target_lists = pairs.target.to_list()
    for n, (pair_id, target) in enumerate(zip(pairs.ids, target_lists)):
        if max_pairs is not None and n >= max_pairs:
            break
        top_ids, top_logits = targets.lookup(int(pair_id))
        labels = list(target) + [eos_id]
        if len(labels) != len(top_ids):
            raise ArtifactError(
                f"pair {pair_id}: {len(labels)} labels but {len(top_ids)} "
                "teacher rows: the dump is not of these pairs; dump the "
                "teacher again for this split and vocabulary."
            )
        references.append(np.asarray(labels, np.int64))
        ids.append(top_ids)
        logits.append(top_logits.astype(np.float64))
    return (
        np.concatenate(references),
        np.concatenate(ids),
        np.concatenate(logits),
    )


def statistics(reference, top_ids, top_logits, temperatures):
    """The table's numbers for one K (the columns of `top_ids`)."""
    hit = top_ids == reference[:, None]
    k = top_ids.shape[1]
    result = {
        "k": k,
        "positions": int(len(reference)),
        "top1_is_reference": float(np.mean(hit[:, 0])),
        "reference_in_top_k": float(np.mean(hit.any(axis=1))),
        "median_logit_gap_1_to_k": float(
            np.median(top_logits[:, 0] - top_logits[:, k - 1])
        ),
        "by_temperature": {},
    }
    for t in temperatures:
        scaled = top_logits / t
        scaled -= scaled.max(axis=1, keepdims=True)
        q = np.exp(scaled)
        q /= q.sum(axis=1, keepdims=True)
        mass = np.where(hit, q, 0.0).sum(axis=1)
        result["by_temperature"][str(t)] = {
            "median_top1_probability": float(np.median(q.max(axis=1))),
            "mean_reference_mass": float(np.mean(mass)),
            "reference_nll": float(np.mean(-np.log(np.maximum(mass, 1e-6)))),
        }
    return result


def choose(results):
    """The (K, T) whose soft targets give the references the lowest NLL."""
    return min(
        (
            {"top_k": r["k"], "temperature": float(t), **s}
            for r in results
            for t, s in r["by_temperature"].items()
        ),
        key=lambda c: c["reference_nll"],
    )


def agreement(reference, teacher_top1, student_top1, student_reference_logp):
    """The teacher's first choice against a student's, per target position.

    Args:
        reference: `[N]` reference ids (`aligned_rows`' first output).
        teacher_top1: `[N]` the teacher's first choice (`top_ids[:, 0]`).
        student_top1: `[N]` the student's teacher-forced arg-max.
        student_reference_logp: `[N]` the student's log-probability of the
            reference (full softmax, no label smoothing).

    Returns the fractions of positions where the teacher is right, the
    student is right, only the teacher is right (what distillation can
    teach this student), only the student is right, both pick the same
    token, and the student's mean reference NLL.
    """
    teacher_right = teacher_top1 == reference
    student_right = student_top1 == reference
    return {
        "positions": int(len(reference)),
        "teacher_top1_is_reference": float(np.mean(teacher_right)),
        "student_top1_is_reference": float(np.mean(student_right)),
        "only_teacher_right": float(np.mean(teacher_right & ~student_right)),
        "only_student_right": float(np.mean(student_right & ~teacher_right)),
        "same_first_choice": float(np.mean(teacher_top1 == student_top1)),
        "student_reference_nll": float(np.mean(-student_reference_logp)),
    }


def student_rows(student, pairs, vocab, max_pairs=None, batch_size=64):
    """`(first choice [N], log p(reference) [N])` of a teacher-forced
    student over the target positions of `pairs` (a `TokenizedPairs`;
    target tokens, then EOS), in `aligned_rows`' order: the pairs in order,
    as the student's own features (`student_example`, `to_keras_inputs`)."""
    dataset = pairs.to_dataset()
    if max_pairs is not None:
        dataset = dataset.take(max_pairs)
    batches = (
        dataset.map(lambda e: student_example(e, vocab.bos_id, vocab.eos_id))
        .padded_batch(batch_size)
        .map(to_keras_inputs)
    )
    first, reference_logp = [], []
    for x, labels, weight in batches:
        log_probs = tf.nn.log_softmax(
            tf.cast(student(x, training=False), tf.float32)
        )
        real = weight > 0  # Not padding: the labels' own positions.
        first.append(tf.boolean_mask(tf.argmax(log_probs, axis=-1), real))
        reference_logp.append(
            tf.boolean_mask(
                tf.gather(log_probs, labels[..., None], batch_dims=2)[..., 0],
                real,
            )
        )
    return (
        tf.concat(first, axis=0).numpy(),
        tf.concat(reference_logp, axis=0).numpy(),
    )

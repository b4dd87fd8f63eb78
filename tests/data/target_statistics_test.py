"""target_statistics: sharpness and reference mass of soft targets."""

import math
import types

import numpy as np
import pytest
import tensorflow as tf

from bertkd_tf.data.target_statistics import (
    agreement,
    aligned_rows,
    choose,
    statistics,
)
from bertkd_tf.errors import ArtifactError


def test_statistics_by_hand():
    reference = np.array([5, 9])
    top_ids = np.array([[5, 7], [3, 4]])
    top_logits = np.array([[2.0, 0.0], [1.0, 1.0]])
    result = statistics(reference, top_ids, top_logits, [1.0, 2.0])
    assert result["k"] == 2 and result["positions"] == 2
    assert result["top1_is_reference"] == 0.5
    assert result["reference_in_top_k"] == 0.5
    assert result["median_logit_gap_1_to_k"] == 1.0
    p1 = math.exp(2) / (math.exp(2) + 1)  # T 1: q of the right first choice
    t1 = result["by_temperature"]["1.0"]
    assert t1["median_top1_probability"] == pytest.approx((p1 + 0.5) / 2)
    assert t1["mean_reference_mass"] == pytest.approx(p1 / 2)
    # The missed reference counts as probability 1e-6.
    assert t1["reference_nll"] == pytest.approx(
        (-math.log(p1) - math.log(1e-6)) / 2
    )
    p2 = math.exp(1) / (math.exp(1) + 1)  # T 2 flattens the first row
    t2 = result["by_temperature"]["2.0"]
    assert t2["mean_reference_mass"] == pytest.approx(p2 / 2)


def test_choose_takes_the_lowest_reference_nll():
    reference = np.array([5, 5, 5, 6])
    top_ids = np.array([[5, 6], [5, 6], [5, 6], [5, 6]])
    top_logits = np.array([[3.0, 0.0]] * 4)
    # Right 3 times in 4 with a gap of 3: T 1 (p 0.95) is overconfident on
    # the miss, a very high T is too flat; the optimum lies between.
    results = [statistics(reference, top_ids, top_logits, [1.0, 2.0, 50.0])]
    chosen = choose(results)
    assert chosen["top_k"] == 2 and chosen["temperature"] == 2.0
    nlls = {
        t: s["reference_nll"] for t, s in results[0]["by_temperature"].items()
    }
    assert chosen["reference_nll"] == min(nlls.values())


def test_aligned_rows_appends_the_eos_label_and_refuses_misaligned_dumps():
    rows = {
        10: (np.array([[4, 1], [2, 1], [3, 2]]), np.ones([3, 2], np.float16)),
        11: (np.array([[4, 1]]), np.ones([1, 2], np.float16)),
    }
    targets = types.SimpleNamespace(lookup=lambda i: rows[i])
    pairs = types.SimpleNamespace(
        ids=np.array([10, 11]), target=tf.ragged.constant([[4, 2], []])
    )
    reference, ids, logits = aligned_rows(targets, pairs, eos_id=3)
    np.testing.assert_array_equal(reference, [4, 2, 3, 3])
    assert ids.shape == (4, 2) and logits.dtype == np.float64
    reference, _, _ = aligned_rows(targets, pairs, eos_id=3, max_pairs=1)
    np.testing.assert_array_equal(reference, [4, 2, 3])
    rows[11] = (np.ones([2, 2], np.int32), np.ones([2, 2], np.float16))
    with pytest.raises(ArtifactError, match="pair 11: 1 labels but 2"):
        aligned_rows(targets, pairs, eos_id=3)


def test_agreement_by_hand():
    reference = np.array([1, 2, 3, 4, 5])
    teacher = np.array([1, 2, 9, 9, 5])  # right at 0, 1, 4
    student = np.array([1, 7, 3, 8, 8])  # right at 0, 2
    logp = np.log([0.5, 0.25, 0.5, 0.125, 0.25])
    a = agreement(reference, teacher, student, logp)
    assert a["positions"] == 5
    assert a["teacher_top1_is_reference"] == pytest.approx(0.6)
    assert a["student_top1_is_reference"] == pytest.approx(0.4)
    assert a["only_teacher_right"] == pytest.approx(0.4)  # positions 1, 4
    assert a["only_student_right"] == pytest.approx(0.2)  # position 2
    assert a["same_first_choice"] == pytest.approx(0.2)  # position 0
    assert a["student_reference_nll"] == pytest.approx(
        -np.mean(np.log([0.5, 0.25, 0.5, 0.125, 0.25]))
    )

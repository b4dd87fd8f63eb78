"""tools/flops.py counts the weights the models really have, and
tools/cost_model.py turns FLOPs into the table docs/SCALING.md shows."""

import numpy as np
import pytest

from bertkd_tf.models.cmlm_teacher import CMLMTeacher
from bertkd_tf.models.transformer_backbone import TransformerSeq2SeqBackbone
from tests.tools.tool_loader import load_tool

flops = load_tool("flops")


def _matmul_weights(weights, exclude):
    """Entries of the kernels not matching `exclude`."""
    return sum(
        int(np.prod(w.shape))
        for w in weights
        if w.path.endswith("kernel") and not any(e in w.path for e in exclude)
    )


@pytest.mark.parametrize("layers,d,f", [(1, 8, 16), (2, 16, 24)])
def test_student_formula_counts_the_backbones_kernels(layers, d, f):
    backbone = TransformerSeq2SeqBackbone(
        vocabulary_size=50,
        num_layers=layers,
        num_heads=2,
        hidden_dim=d,
        intermediate_dim=f,
    )
    encoder, decoder = flops.student_matmul_params(d, f, layers)
    weights = backbone.weights
    assert (
        _matmul_weights(
            [w for w in weights if "encoder_layer" in w.path], ["embedding"]
        )
        == encoder
    )
    assert (
        _matmul_weights(
            [w for w in weights if "decoder_layer" in w.path], ["embedding"]
        )
        == decoder
    )


def test_teacher_formula_counts_the_encoders_kernels():
    teacher = CMLMTeacher.from_scratch(
        bert_ids=np.arange(5, 25),
        vocabulary_size=40,
        num_layers=2,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=12,
        max_sequence_length=16,
    )
    layers = [
        w
        for w in teacher.weights
        if "transformer_layer" in w.path or "transformer/layer" in w.path
    ]
    assert layers, [w.path for w in teacher.weights]
    assert _matmul_weights(
        layers, ["embedding"]
    ) == flops.teacher_matmul_params(8, 12, 2)


def test_dump_runs_one_copy_per_slot_up_to_the_passes():
    one = flops.teacher_forward_flops(8, 16, 2, 30, 3 + 2 + 3, 0)
    head = 2 * (8 * 8 + 8 * 30)
    # Target of 2 tokens: 3 slots (EOS included), fewer than P = 7 copies.
    assert flops.dump_flops(8, 16, 2, 30, 3, 2, 7) == 3 * one + 3 * head
    # Target of 20 tokens: P = 7 copies, 21 slots through the head.
    long = flops.teacher_forward_flops(8, 16, 2, 30, 3 + 20 + 3, 0)
    assert flops.dump_flops(8, 16, 2, 30, 3, 20, 7) == 7 * long + 21 * head


def test_training_is_three_forwards_and_linear_in_the_batch():
    args = dict(d=16, f=32, layers=2, heads=2, vocab=100, source=7, target=5)
    assert flops.training_flops(batch=6, **args) == 3 * flops.training_flops(
        batch=2, **args
    )
    teacher = flops.teacher_training_flops(16, 32, 2, 100, 12, 3)
    assert teacher == 3 * flops.teacher_forward_flops(16, 32, 2, 100, 12, 3)


def test_cost_table_rows_and_memory_verdicts():
    cost_model = load_tool("cost_model")
    table = cost_model.tables(cost_model.CORPORA)
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    # 3 corpora x 3 stages, 3 corpora of disk/memory, 2 headers.
    assert len(rows) == 9 + 3 + 2
    wmt = [r for r in rows if r.startswith("| WMT14") and "K 64" in r]
    assert wmt and wmt[0].endswith("| no | 400.0 MB |")
    multi30k = [r for r in rows if r.startswith("| Multi30k") and "K 16" in r]
    assert multi30k and multi30k[0].endswith("| yes | 400.0 MB |")
    # Stored bytes: positions x (K x 6 + framing).
    corpus = cost_model.CORPORA["wmt14"]
    positions = corpus.pairs * (corpus.target + 1)
    assert cost_model.disk_bytes(corpus, 8) == pytest.approx(
        positions * (48 + cost_model.FRAMING_BYTES)
    )

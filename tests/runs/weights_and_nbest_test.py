"""evaluate / translate / export: another weights file (e.g. the average
of checkpoints), n-best lists, ROUGE-Lsum and the decoding constraints."""

import csv
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from bertkd_tf.decoding.decode import decode_student
from bertkd_tf.decoding.generator import Generator
from bertkd_tf.errors import ArtifactError, ConfigError, MissingArtifactError
from bertkd_tf.models.transformer_backbone import TransformerSeq2SeqBackbone
from bertkd_tf.models.transformer_seq2seq import TransformerSeq2Seq
from bertkd_tf.runs import evaluate, export, translate
from bertkd_tf.training import trainer
from tests.runs.evaluate_test import SETTINGS, SOURCES, setup  # noqa: F401

AVERAGED = "averaged.weights.h5"


def other_weights(vocabulary, work_dir, seed=5):
    """Writes `student/averaged.weights.h5` (+ .sha256) from a student of
    the same configuration with other weights; returns that student."""
    keras.utils.set_random_seed(seed)
    model = TransformerSeq2Seq(
        TransformerSeq2SeqBackbone(
            vocabulary_size=vocabulary.size,
            num_layers=1,
            num_heads=2,
            hidden_dim=16,
            intermediate_dim=32,
            dropout=0.0,
            max_sequence_length=32,
        )
    )
    model(
        {
            "encoder_token_ids": np.ones((1, 3), "int32"),
            "encoder_padding_mask": np.ones((1, 3), "int32"),
            "decoder_token_ids": np.ones((1, 3), "int32"),
            "decoder_padding_mask": np.ones((1, 3), "int32"),
        }
    )
    trainer.write_weights(model, os.path.join(work_dir, "student", AVERAGED))
    return model


def test_evaluate_and_translate_read_the_weights_file(setup, tmp_path):  # noqa: F811
    task, work_dir, model, vocabulary = setup
    averaged = other_weights(vocabulary, work_dir)
    assert os.path.exists(
        os.path.join(work_dir, "student", AVERAGED + ".sha256")
    )
    result = evaluate.run(
        task=task,
        work_dir=work_dir,
        verbose=False,
        weights_file=AVERAGED,
        output_dir=str(tmp_path / "averaged"),
        **SETTINGS,
    )
    hypotheses = (tmp_path / "averaged" / "hypotheses.txt").read_text()
    generate = {
        name: Generator(m, vocabulary, jit_compile=False).generate(
            SOURCES, beam_size=2, max_length=6
        )
        for name, m in (("final", model), ("averaged", averaged))
    }
    assert generate["final"] != generate["averaged"]  # the file matters
    assert hypotheses.splitlines() == [
        " ".join(h.split()) for h in generate["averaged"]
    ]
    assert result["scores"]["weights_file"] == AVERAGED
    # translate, with the same file, writes the same outputs.
    source = tmp_path / "in.txt"
    source.write_text("\n".join(SOURCES) + "\n")
    output = tmp_path / "out.txt"
    translate.run(
        work_dir=work_dir,
        input_file=str(source),
        output_file=str(output),
        weights_file=AVERAGED,
        **SETTINGS,
    )
    assert output.read_text() == hypotheses


def test_a_missing_or_damaged_weights_file_names_the_setting(setup, tmp_path):  # noqa: F811
    task, work_dir, _, vocabulary = setup
    with pytest.raises(MissingArtifactError) as error:
        evaluate.run(
            task=task, work_dir=work_dir, weights_file=AVERAGED, **SETTINGS
        )
    message = str(error.value)
    assert AVERAGED in message and "evaluate.run.weights_file" in message
    assert "tools/average_checkpoints.py" in message
    other_weights(vocabulary, work_dir)
    path = os.path.join(work_dir, "student", AVERAGED)
    with open(path, "r+b") as f:  # flip 16 bytes in the middle
        f.seek(os.path.getsize(path) // 2)
        flipped = bytes(b ^ 0xFF for b in f.read(16))
        f.seek(os.path.getsize(path) // 2)
        f.write(flipped)
    with pytest.raises(ArtifactError, match="SHA-256"):
        translate.run(
            work_dir=work_dir,
            input_file=str(tmp_path / "absent"),
            weights_file=AVERAGED,
            **SETTINGS,
        )


def read_nbest(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def test_translate_writes_nbest_lists(setup, tmp_path):  # noqa: F811
    _, work_dir, model, vocabulary = setup
    lines = SOURCES[:2] + [""] + SOURCES[2:]
    source = tmp_path / "in.txt"
    source.write_text("\n".join(lines) + "\n")
    output = tmp_path / "out.tsv"
    translate.run(
        work_dir=work_dir,
        input_file=str(source),
        output_file=str(output),
        nbest=2,
        **SETTINGS,
    )
    rows = read_nbest(output)
    assert [(int(r[0]), int(r[1])) for r in rows] == [
        (i, rank) for i in range(5) for rank in (1, 2)
    ]
    assert all(len(row) == 4 for row in rows)
    expected, scores = Generator(model, vocabulary, jit_compile=False).generate(
        [line for line in lines if line],
        beam_size=2,
        max_length=6,
        num_return_sequences=2,
        return_scores=True,
    )
    expected.insert(2, ["", ""])
    scores.insert(2, [0.0, 0.0])
    assert [row[3] for row in rows] == [t for pair in expected for t in pair]
    np.testing.assert_allclose(
        [float(row[2]) for row in rows], np.ravel(scores), atol=1e-6
    )
    for i in range(5):  # best first
        assert float(rows[2 * i][2]) >= float(rows[2 * i + 1][2])
    # The 1-best column equals the plain output.
    plain = tmp_path / "plain.txt"
    translate.run(
        work_dir=work_dir,
        input_file=str(source),
        output_file=str(plain),
        **SETTINGS,
    )
    assert plain.read_text().splitlines() == [row[3] for row in rows[::2]]


def test_translate_nbest_greedy_and_bad_values(setup, tmp_path):  # noqa: F811
    _, work_dir, _, _ = setup
    source = tmp_path / "in.txt"
    source.write_text(SOURCES[0] + "\n")
    output = tmp_path / "out.tsv"
    greedy = SETTINGS["search"].replace(beam_size=1)
    translate.run(
        work_dir=work_dir,
        input_file=str(source),
        output_file=str(output),
        nbest=1,
        search=greedy,
    )
    ((index, rank, score, _),) = read_nbest(output)
    assert (index, rank) == ("0", "1") and float(score) < 0
    for bad in (3, 0, True, "2"):
        with pytest.raises(ConfigError, match="translate.run.nbest"):
            translate.run(work_dir=work_dir, nbest=bad, **SETTINGS)


def test_nbest_lines_format():
    assert translate.nbest_lines(
        [["a dog", "the\tdog"], ["", ""]], [[-0.25, -1.5], [0.0, 0.0]]
    ) == [
        "0\t1\t-0.250000\ta dog",
        "0\t2\t-1.500000\tthe dog",
        "1\t1\t0.000000\t",
        "1\t2\t0.000000\t",
    ]


def test_evaluate_summarization_with_constraints_and_rouge_lsum(
    setup,  # noqa: F811
    tmp_path,
):
    task, work_dir, model, vocabulary = setup
    task.kind = "summarization"
    search = SETTINGS["search"].replace(min_length=4, no_repeat_ngram_size=1)
    result = evaluate.run(
        task=task,
        work_dir=work_dir,
        verbose=False,
        output_dir=str(tmp_path / "out"),
        search=search,
        batch_size=3,
    )
    scores = result["scores"]
    assert list(scores["metrics"]) == [
        "rouge1",
        "rouge2",
        "rougeL",
        "rougeLsum",
    ]
    assert scores["decoding"]["min_length"] == 4
    assert scores["decoding"]["no_repeat_ngram_size"] == 1
    lines = (tmp_path / "out" / "hypotheses.txt").read_text().splitlines()
    # The raw search output (padding included, which the id lists drop):
    # EOS after >= 4 tokens, no token twice (n = 1, BOS included).
    sources = [row + [3] for row in vocabulary.tokenize(SOURCES).to_list()]
    width = max(len(row) for row in sources)
    ids = np.array([row + [0] * (width - len(row)) for row in sources])
    sequences, _ = decode_student(
        model,
        tf.constant(ids, tf.int32),
        tf.constant(ids > 0, tf.int32),
        search,
        buffer_length=6,
        bos_id=2,
        eos_id=3,
        pad_id=0,
    )
    for row in sequences.numpy().tolist():
        generated = row[: row.index(3)] if 3 in row else row
        assert len(generated) >= 4, row
        assert len(set(generated + [2])) == len(generated) + 1, row
    assert lines == [
        " ".join(vocabulary.decode(row).split())
        for row in sequences.numpy().tolist()
    ]


@pytest.mark.slow
def test_export_weights_file_and_nbest_signature(setup, tmp_path):  # noqa: F811
    _, work_dir, _, vocabulary = setup
    averaged = other_weights(vocabulary, work_dir)
    result = export.run(
        work_dir=work_dir,
        export_dir=str(tmp_path / "served"),
        weights_file=AVERAGED,
        nbest=2,
        search=SETTINGS["search"],
    )
    with open(
        os.path.join(result["output_dir"], "assets.extra", "bertkd_export.json")
    ) as f:
        config = json.load(f)
    assert config["weights_file"] == AVERAGED
    assert config["num_return_sequences"] == 2
    loaded = tf.saved_model.load(result["output_dir"])
    assert "serve_nbest" in loaded.signatures
    out = loaded.signatures["serve_nbest"](inputs=tf.constant(SOURCES[:2]))
    expected = Generator(averaged, vocabulary, jit_compile=False).generate(
        SOURCES[:2], beam_size=2, max_length=6, num_return_sequences=2
    )
    got = [[x.decode() for x in row] for row in out["outputs"].numpy()]
    assert got == expected
    with pytest.raises(ConfigError, match="export.run.nbest"):
        export.run(work_dir=work_dir, nbest=3, search=SETTINGS["search"])

"""evaluate / translate: tiny end-to-end runs on a saved random student."""

import json
import os
import subprocess
import sys

import keras
import pytest

from bertkd_tf.data.bert_word_piece_tokenizer import BertWordPieceTokenizer
from bertkd_tf.data.task import Task
from bertkd_tf.data.task_vocabulary import TaskVocabulary
from bertkd_tf.decoding.generator import Generator
from bertkd_tf.decoding.search_settings import SearchSettings
from bertkd_tf.models.transformer_backbone import TransformerSeq2SeqBackbone
from bertkd_tf.models.transformer_seq2seq import TransformerSeq2Seq
from bertkd_tf.runs import evaluate, translate
from bertkd_tf.runs.distill import save_student

WORDS = "a dog cat runs the red ball ein hund katze läuft der rote".split()
BERT_VOCABULARY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "##s"]
SOURCES = ["ein hund läuft", "der rote ball", "katze", "ein hund der katze"]
TARGETS = ["A dog runs", "the red ball", "cat", "a dog the cat"]
SACREBLEU = os.path.join(os.path.dirname(sys.executable), "sacrebleu")
SETTINGS = dict(
    search=SearchSettings(beam_size=2, max_length=6, jit_compile=False),
    batch_size=3,
)


def _save_student(model, directory):
    os.makedirs(directory, exist_ok=True)
    save_student(model, directory)


@pytest.fixture()
def setup(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "valid.de").write_text("\n".join(SOURCES) + "\n")
    (data_dir / "valid.en").write_text("\n".join(TARGETS) + "\n")
    work_dir = tmp_path / "work"
    tokenizer = BertWordPieceTokenizer(BERT_VOCABULARY, lowercase=True)
    vocabulary = TaskVocabulary.build(tokenizer, SOURCES + TARGETS)
    vocabulary.save(str(work_dir / "vocab"))
    keras.utils.set_random_seed(0)
    backbone = TransformerSeq2SeqBackbone(
        vocabulary_size=vocabulary.size,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        dropout=0.0,
        max_sequence_length=32,
    )
    model = TransformerSeq2Seq(backbone)
    _save_student(model, str(work_dir / "student"))
    task = Task(str(data_dir), "de", "en", max_source_length=16)
    return task, str(work_dir), model, vocabulary


@pytest.mark.slow
def test_evaluate_writes_hypotheses_in_order_and_scores(setup):
    task, work_dir, model, vocabulary = setup
    result = evaluate.run(
        task=task, work_dir=work_dir, verbose=False, **SETTINGS
    )
    output_dir = result["output_dir"]
    assert output_dir == os.path.join(work_dir, "student", "evaluate", "valid")
    hypotheses = open(os.path.join(output_dir, "hypotheses.txt")).read()
    hypotheses = hypotheses.splitlines()
    # Each line is what the model writes for that source alone.
    generator = Generator(model, vocabulary, jit_compile=False)
    expected = [
        generator.generate([s], beam_size=2, max_length=6)[0] for s in SOURCES
    ]
    assert hypotheses == [" ".join(e.split()) for e in expected]
    references = open(os.path.join(output_dir, "references.txt")).read()
    # Uncased vocabulary: references are lower-cased.
    assert references.splitlines()[0] == "a dog runs"

    scores = json.load(open(os.path.join(output_dir, "scores.json")))
    assert scores["sentences"] == 4
    assert set(scores["metrics"]) == {"bleu", "sacrebleu", "chrf"}
    assert "tok:none" in scores["metrics"]["bleu"]["signature"]
    assert scores["sentences_per_second"] > 0
    assert 1 <= scores["decoding"]["compilations"] <= 2
    if os.path.exists(SACREBLEU):
        command = subprocess.run(
            [
                SACREBLEU,
                os.path.join(output_dir, "references.txt"),
                "-i",
                os.path.join(output_dir, "hypotheses.txt"),
                "-b",
                "-w",
                "6",
                "--tokenize",
                "none",
                "--smooth-method",
                "none",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        assert scores["metrics"]["bleu"]["score"] == pytest.approx(
            float(command), abs=1e-6
        )


def test_evaluate_summarization_reports_rouge(setup, tmp_path):
    task, work_dir, _, _ = setup
    task.kind = "summarization"
    result = evaluate.run(
        task=task,
        work_dir=work_dir,
        verbose=False,
        output_dir=str(tmp_path / "out"),
        max_pairs=2,
        **SETTINGS,
    )
    metrics = result["scores"]["metrics"]
    assert list(metrics) == ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    lines = open(tmp_path / "out" / "hypotheses.txt").read().splitlines()
    assert len(lines) == 2


def test_missing_student_is_a_clear_error(setup):
    task, work_dir, _, _ = setup
    with pytest.raises(FileNotFoundError, match="distill"):
        evaluate.run(task=task, work_dir=work_dir, model_dir="nothing_here")


def test_translate_file_keeps_order_and_empty_lines(setup, tmp_path):
    task, work_dir, _, _ = setup
    evaluated = evaluate.run(
        task=task, work_dir=work_dir, verbose=False, **SETTINGS
    )
    hypotheses = (
        open(os.path.join(evaluated["output_dir"], "hypotheses.txt"))
        .read()
        .splitlines()
    )
    source_file = tmp_path / "in.txt"
    source_file.write_text("\n".join(SOURCES[:2] + [""] + SOURCES[2:]) + "\n")
    output_file = tmp_path / "out.txt"
    result = translate.run(
        work_dir=work_dir,
        input_file=str(source_file),
        output_file=str(output_file),
        **SETTINGS,
    )
    assert result["lines"] == 5
    lines = output_file.read_text().splitlines()
    assert lines == hypotheses[:2] + [""] + hypotheses[2:]


def test_gin_files_parse(tmp_path):
    import gin

    from bertkd_tf import main

    try:
        for mode, files in (
            (
                "evaluate",
                ["gin/tasks/iwslt14_de_en.gin", "gin/runs/evaluate.gin"],
            ),
            ("translate", ["gin/runs/translate.gin"]),
        ):
            gin.clear_config()
            _, run = main.parse_config(
                mode,
                files,
                [
                    f"WORK_DIR='{tmp_path}'",
                    f"DATA_DIR='{tmp_path}'",
                    "BEAM_SIZE=4",
                ],
            )
            assert gin.query_parameter("%BEAM_SIZE") == 4
            assert gin.query_parameter("%LENGTH_PENALTY") == 0.6
            assert callable(run)
    finally:
        gin.clear_config()


def test_progress_logs_sentences_per_second_and_time_left(caplog):
    """Rate from the decoder's seconds, time left at that rate; a log line
    every `every_seconds` of the (fake) clock."""
    from bertkd_tf.runs import evaluate

    now = [0.0]
    progress = evaluate._Progress(200, verbose=False, clock=lambda: now[0])
    caplog.set_level("INFO")
    # absl logs through the "absl" logger, whose level an earlier test may
    # have raised (absl verbosity): INFO must reach caplog whatever ran.
    caplog.set_level("INFO", logger="absl")
    progress(50, 200, 25.0)  # 2 sentences/s: 150 left take 1:15.
    assert "decoded 50/200 sentences, 2.0 sentences/s, ETA 1:15 left" in (
        caplog.text
    )
    now[0] = 10.0
    progress(60, 200, 30.0)  # Within 30 s of the last line: quiet.
    assert "60/200" not in caplog.text
    now[0] = 31.0
    progress(200, 200, 100.0)
    assert "decoded 200/200 sentences, 2.0 sentences/s\n" in caplog.text + "\n"

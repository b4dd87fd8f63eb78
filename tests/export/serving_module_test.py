"""ServingModule: the SavedModel answers like `generate()`, without our code.

The export is loaded in a subprocess that imports only tensorflow and
tensorflow_text (it asserts bertkd_tf was never imported), and compared
with `TransformerSeq2Seq.generate()` run in this process.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from bertkd_tf.data.bert_word_piece_tokenizer import (
    BertWordPieceTokenizer,
    load_bert_vocabulary,
)
from bertkd_tf.data.task_vocabulary import TaskVocabulary
from bertkd_tf.data.text_pairs import read_text_pairs
from bertkd_tf.export.serving_module import ServingModule
from bertkd_tf.models.transformer_backbone import TransformerSeq2SeqBackbone
from bertkd_tf.models.transformer_seq2seq import TransformerSeq2Seq

# The conftest fixtures are function-scoped; the export is shared by the
# module's tests (saving and loading it is the slow part), so the same
# fixture files are read here directly.
FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures")
SETTINGS = dict(beam_size=3, length_penalty=0.6, max_length=10)
MAX_SOURCE_LENGTH = 16
LONG = " ".join(["ein hund läuft über die wiese ."] * 167)  # 1,002 words
NON_LATIN = "Собака бежит по лугу. 一只狗在草地上跑。 كلب يجري"
# Loaded with tensorflow + tensorflow_text only.
LOADER = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the TF Text ops)
    path, request = sys.argv[1], json.loads(sys.stdin.read())
    loaded = tf.saved_model.load(path)
    strings = loaded.signatures["serving_default"]
    ids = loaded.signatures["serve_token_ids"]
    answer = {"signatures": sorted(loaded.signatures)}
    for name, batch in request["strings"].items():
        out = strings(inputs=tf.constant(batch, tf.string))
        answer[name] = {
            "outputs": [x.decode() for x in out["outputs"].numpy().tolist()],
            "scores": out["scores"].numpy().tolist(),
            "shapes": [out["outputs"].shape.as_list(),
                       out["scores"].shape.as_list()],
        }
    for name, (token_ids, mask, shape) in request["ids"].items():
        out = ids(
            encoder_token_ids=tf.reshape(tf.constant(token_ids, tf.int32),
                                         shape),
            encoder_padding_mask=tf.reshape(tf.constant(mask, tf.int32),
                                            shape),
        )
        answer[name] = {k: v.numpy().tolist() for k, v in out.items()}
        answer[name]["shape"] = out["token_ids"].shape.as_list()
    for name, (token_ids, shape, mask, mask_shape) in request.get(
            "bad_ids", {}).items():
        try:
            ids(
                encoder_token_ids=tf.reshape(
                    tf.constant(token_ids, tf.int32), shape),
                encoder_padding_mask=tf.reshape(
                    tf.constant(mask, tf.int32), mask_shape),
            )
            answer[name] = {"error": None}
        except Exception as error:  # noqa: BLE001
            answer[name] = {"error": type(error).__name__,
                            "message": getattr(error, "message", str(error))}
    answer["imported_bertkd_tf"] = any(
        m.startswith("bertkd_tf") for m in sys.modules)
    print("ANSWER" + json.dumps(answer))
    """
)


def tiny_vocabulary():
    tokenizer = BertWordPieceTokenizer(
        load_bert_vocabulary(os.path.join(FIXTURES, "bert_vocab_uncased.txt"))
    )
    pairs = read_text_pairs(
        os.path.join(FIXTURES, "tiny_de_en"), "train", "de", "en"
    )
    return TaskVocabulary.build(tokenizer, pairs.sources + pairs.targets)


def tiny_student(vocabulary, seed=0):
    """A random student that writes words, not an immediate EOS.

    Random weights favour the specials; zeroing their embeddings (and
    shrinking EOS') makes the outputs word sequences of varied content.
    """
    keras.utils.set_random_seed(seed)
    backbone = TransformerSeq2SeqBackbone(
        vocabulary_size=vocabulary.size,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        dropout=0.0,
        max_sequence_length=MAX_SOURCE_LENGTH,
    )
    model = TransformerSeq2Seq(backbone)
    embeddings = backbone.token_embedding.embeddings
    weights = embeddings.numpy() * 1.5
    weights[[0, 1, 2, 4]] = 0.0
    weights[3] *= 0.3
    embeddings.assign(weights)
    return model


def sentences():
    pairs = read_text_pairs(
        os.path.join(FIXTURES, "tiny_de_en"), "valid", "de", "en"
    )
    return pairs.sources[:6] + [NON_LATIN, LONG]


def run_loader(path, request):
    result = subprocess.run(
        [sys.executable, "-c", LOADER, path],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = [x for x in result.stdout.splitlines() if x.startswith("ANSWER")]
    return json.loads(line[-1][len("ANSWER") :])


def run_saved_model_cli(*commands):
    """saved_model_cli commands in one process, TF Text ops registered.

    Returns each command's standard output.
    """
    code = textwrap.dedent(
        """
        import json, sys
        import tensorflow_text  # noqa: F401
        from tensorflow.python.tools import saved_model_cli
        for argv in json.loads(sys.argv[1]):
            sys.argv = ["saved_model_cli"] + argv
            try:
                saved_model_cli.main()  # absl's app.run: exits when done
            except SystemExit as done:
                if done.code not in (0, None):
                    raise
            print("=== END OF COMMAND ===", flush=True)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(list(commands))],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.split("=== END OF COMMAND ===")[: len(commands)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    vocabulary = tiny_vocabulary()
    model = tiny_student(vocabulary)
    path = str(tmp_path_factory.mktemp("export") / "1")
    # Two shards: the batch of 8 splits 4 + 4 (beam 3: at least 4 examples
    # a shard), the batch of 4 takes one shard, the empty batch none.
    ServingModule(model, vocabulary, search_shards=2, **SETTINGS).save(path)
    source_ids = vocabulary.tokenize(sentences()[:4]).to_list()
    width = max(len(row) for row in source_ids) + 1
    ids = np.zeros((len(source_ids) + 1, width), np.int32)
    for i, row in enumerate(source_ids):
        ids[i, : len(row) + 1] = row + [vocabulary.eos_id]
    # The last row is empty (all padding).
    request = {
        "strings": {
            "batch": sentences(),
            "empties": ["", "   ", "ein hund", ""],
            "empty_batch": [],
        },
        "ids": {
            "ids": [
                ids.ravel().tolist(),
                (ids > 0).ravel().tolist(),
                list(ids.shape),
            ],
            "ids_empty_batch": [[], [], [0, 3]],
            "ids_no_columns": [[], [], [2, 0]],
        },
        # Bad inputs: (ids, shape, mask, mask shape).
        "bad_ids": {
            "negative_id": [[5, -1, 3], [1, 3], [1, 1, 1], [1, 3]],
            "id_too_large": [
                [5, vocabulary.size, 3],
                [1, 3],
                [1, 1, 1],
                [1, 3],
            ],
            "short_mask": [[5, 6, 3, 0], [2, 2], [1, 1, 1], [1, 3]],
            "long_mask": [[5, 6, 3], [1, 3], [1, 1, 1, 0], [1, 4]],
        },
    }
    answer = run_loader(path, request)
    return path, model, vocabulary, source_ids, answer


@pytest.mark.slow
def test_loads_without_bertkd_tf_and_lists_both_signatures(exported):
    _, _, _, _, answer = exported
    assert answer["imported_bertkd_tf"] is False
    assert answer["signatures"] == ["serve_token_ids", "serving_default"]


@pytest.mark.slow
def test_serving_default_matches_generate(exported):
    _, model, vocabulary, _, answer = exported
    expected, scores = model.generate(
        sentences(),
        vocabulary,
        return_scores=True,
        jit_compile=False,
        **SETTINGS,
    )
    assert answer["batch"]["outputs"] == expected
    # Outputs are real sentences, not all empty or all equal.
    assert all(expected) and len(set(expected)) > 1
    np.testing.assert_allclose(answer["batch"]["scores"], scores, atol=1e-4)
    assert answer["batch"]["shapes"] == [[8], [8]]


@pytest.mark.slow
def test_serve_token_ids_matches_generate(exported):
    _, model, vocabulary, source_ids, answer = exported
    expected, scores = model.generate(
        source_ids, return_scores=True, jit_compile=False, **SETTINGS
    )
    token_ids = np.array(answer["ids"]["token_ids"])
    mask = np.array(answer["ids"]["padding_mask"])
    assert token_ids.shape == mask.shape
    assert token_ids.shape == (5, max(len(row) for row in expected))
    got = [row[m == 1].tolist() for row, m in zip(token_ids, mask)]
    assert got[:4] == expected
    assert got[4] == [] and answer["ids"]["scores"][4] == 0.0
    np.testing.assert_allclose(answer["ids"]["scores"][:4], scores, atol=1e-4)
    assert np.all(token_ids[mask == 0] == 0)


@pytest.mark.slow
def test_long_and_non_latin_inputs(exported):
    _, model, vocabulary, _, answer = exported
    outputs = answer["batch"]["outputs"]
    # The 1,001-word input is cut to the model's maximum source length.
    truncated = vocabulary.tokenize([LONG])[0, : MAX_SOURCE_LENGTH - 1]
    assert len(LONG.split()) > 1000
    (expected,) = model.generate(
        [truncated.numpy().tolist()],
        output="strings",
        vocabulary=vocabulary,
        jit_compile=False,
        **SETTINGS,
    )
    assert outputs[-1] == expected
    # Non-Latin text maps to [UNK] pieces and still translates.
    assert outputs[-2] and isinstance(outputs[-2], str)


@pytest.mark.slow
def test_empty_strings_and_empty_batches(exported):
    _, model, vocabulary, _, answer = exported
    empties = answer["empties"]
    assert empties["outputs"][0] == empties["outputs"][1] == ""
    assert empties["outputs"][3] == ""
    assert empties["scores"][0] == empties["scores"][1] == 0.0
    # A non-empty row among empty ones is translated as on its own.
    assert (
        empties["outputs"][2]
        == model.generate(
            ["ein hund"], vocabulary, jit_compile=False, **SETTINGS
        )[0]
    )
    assert answer["empty_batch"]["outputs"] == []
    assert answer["empty_batch"]["shapes"] == [[0], [0]]
    assert answer["ids_empty_batch"]["scores"] == []
    assert answer["ids_empty_batch"]["shape"] == [0, 0]
    # Two rows without any column: two empty outputs.
    assert answer["ids_no_columns"]["scores"] == [0.0, 0.0]
    assert answer["ids_no_columns"]["shape"] == [2, 0]


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, expected",
    [
        ("negative_id", "encoder_token_ids has a negative id; ids must be"),
        ("id_too_large", "encoder_token_ids has an id >= {size}; ids must be"),
        ("short_mask", "encoder_padding_mask must have the shape of"),
        ("long_mask", "encoder_padding_mask must have the shape of"),
    ],
)
def test_serve_token_ids_refuses_bad_inputs_with_a_clear_message(
    exported, case, expected
):
    _, _, vocabulary, _, answer = exported
    assert answer[case]["error"] == "InvalidArgumentError"
    message = answer[case]["message"]
    assert "serve_token_ids: " + expected.format(size=vocabulary.size) in (
        message
    )
    if "ids must be" in expected:
        assert f"task vocabulary ids in [0, {vocabulary.size})" in message
    else:
        assert "encoder_token_ids, [batch, length]" in message


@pytest.mark.slow
def test_saved_model_cli_show_and_run(exported):
    path = exported[0]
    shown, ran = run_saved_model_cli(
        ["show", "--dir", path, "--all"],
        [
            "run",
            "--dir",
            path,
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
            "--input_exprs",
            'inputs=["ein hund läuft ."]',
        ],
    )
    assert "signature_def['serving_default']" in shown
    assert "signature_def['serve_token_ids']" in shown
    assert "inputs['inputs']" in shown and "outputs['outputs']" in shown
    assert "inputs['encoder_token_ids']" in shown
    model, vocabulary = exported[1], exported[2]
    (expected,) = model.generate(
        ["ein hund läuft ."], vocabulary, jit_compile=False, **SETTINGS
    )
    assert "Result for output key outputs" in ran
    assert repr(expected.encode())[1:] in ran


@pytest.mark.slow
def test_assets_and_settings_are_exported(exported):
    path, _, vocabulary, _, _ = exported
    assets = sorted(os.listdir(os.path.join(path, "assets")))
    assert assets == ["bert_vocab.txt", "task_vocabulary.tsv", "tokenizer.json"]
    with open(os.path.join(path, "assets.extra", "bertkd_export.json")) as f:
        config = json.load(f)
    assert config["beam_size"] == 3 and config["max_length"] == 10
    assert config["search_shards"] == 2
    assert config["max_source_length"] == MAX_SOURCE_LENGTH
    assert config["vocabulary_fingerprint"] == vocabulary.fingerprint


def test_greedy_export_matches_generate_in_process():
    vocabulary = tiny_vocabulary()
    model = tiny_student(vocabulary, seed=1)
    module = ServingModule(model, vocabulary, beam_size=1, max_length=6)
    batch = sentences()[:3]
    out = module.serve_strings(tf.constant(batch))
    expected, scores = model.generate(
        batch,
        vocabulary,
        beam_size=1,
        max_length=6,
        return_scores=True,
        jit_compile=False,
    )
    assert [x.decode() for x in out["outputs"].numpy()] == expected
    np.testing.assert_allclose(out["scores"].numpy(), scores, atol=1e-4)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_sharded_search_equals_one_search(beam_size):
    # Beam 3: shards of at least 4 examples; greedy: at least 10. Batch
    # sizes around those bounds: one shard, uneven, even and 4 shards.
    vocabulary = tiny_vocabulary()
    model = tiny_student(vocabulary, seed=2)
    settings = dict(beam_size=beam_size, max_length=8)
    one = ServingModule(model, vocabulary, search_shards=1, **settings)
    four = ServingModule(model, vocabulary, search_shards=4, **settings)
    pool = sentences()[:6] + ["", "ein hund"] + sentences()[:6]
    for size in (0, 1, 3, 5, 9, 11, 14) + ((20, 40) if beam_size == 1 else ()):
        batch = tf.constant((pool * 3)[:size], tf.string)
        want, got = one.serve_strings(batch), four.serve_strings(batch)
        assert got["outputs"].numpy().tolist() == (
            want["outputs"].numpy().tolist()
        ), size
        np.testing.assert_allclose(
            got["scores"].numpy(), want["scores"].numpy(), atol=1e-5
        )
    assert one.get_config()["search_shards"] == 1
    assert four.get_config()["search_shards"] == 4


def test_save_refuses_a_non_empty_directory(tmp_path):
    vocabulary = tiny_vocabulary()
    module = ServingModule(tiny_student(vocabulary), vocabulary)
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="non-empty"):
        module.save(str(tmp_path))
    assert os.listdir(tmp_path) == ["keep.txt"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(beam_size=0), "beam_size` must be >= 1. Received: beam_size=0"),
        (dict(max_length=2.5), "max_length` must be an int"),
        (dict(max_length_margin=-1), "max_length_margin=-1"),
        (dict(max_source_length=1), "max_source_length=1"),
        (dict(length_penalty="x"), "length_penalty='x'"),
        (dict(search_shards=3), "power of two >= 1. Received: search_shards=3"),
        (dict(search_shards=0), "search_shards=0"),
        (dict(search_shards=True), "search_shards=True"),
    ],
)
def test_bad_settings_are_rejected(kwargs, message):
    vocabulary = tiny_vocabulary()
    model = tiny_student(vocabulary)
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        ServingModule(model, vocabulary, **kwargs)


def test_vocabulary_size_mismatch_is_rejected():
    vocabulary = tiny_vocabulary()
    backbone = TransformerSeq2SeqBackbone(
        vocabulary_size=vocabulary.size + 1,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=8,
    )
    with pytest.raises(ValueError, match=f"\\({vocabulary.size + 1}\\)"):
        ServingModule(TransformerSeq2Seq(backbone), vocabulary)

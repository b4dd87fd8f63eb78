"""ServingModule's `serve_nbest` (the N best with scores) and the
summarization constraints in the export: the SavedModel answers like
`generate()`, loaded in a subprocess that imports only tensorflow and
tensorflow_text."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from bertkd_tf.export.serving_module import ServingModule
from tests.export.serving_module_test import (
    sentences,
    tiny_student,
    tiny_vocabulary,
)

SETTINGS = dict(beam_size=3, length_penalty=0.6, max_length=10)
LOADER = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the TF Text ops)
    path, batches = sys.argv[1], json.loads(sys.stdin.read())
    loaded = tf.saved_model.load(path)
    answer = {"signatures": sorted(loaded.signatures), "nbest": []}
    for batch in batches:
        out = loaded.signatures["serve_nbest"](
            inputs=tf.constant(batch, tf.string))
        answer["nbest"].append({
            "outputs": [[x.decode() for x in row]
                        for row in out["outputs"].numpy().tolist()],
            "scores": out["scores"].numpy().tolist(),
            "shapes": [out["outputs"].shape.as_list(),
                       out["scores"].shape.as_list()],
        })
    answer["imported_bertkd_tf"] = any(
        m.startswith("bertkd_tf") for m in sys.modules)
    print("ANSWER" + json.dumps(answer))
    """
)


def as_lists(out):
    outputs = [[x.decode() for x in row] for row in out["outputs"].numpy()]
    return outputs, out["scores"].numpy()


@pytest.mark.parametrize("beam_size, nbest", [(3, 3), (3, 2), (1, 1)])
def test_serve_nbest_matches_generate_in_process(beam_size, nbest):
    vocabulary = tiny_vocabulary()
    model = tiny_student(vocabulary)
    settings = dict(SETTINGS, beam_size=beam_size)
    module = ServingModule(
        model, vocabulary, num_return_sequences=nbest, **settings
    )
    batch = sentences()[:4] + [""]
    outputs, scores = as_lists(module.serve_nbest(tf.constant(batch)))
    assert np.shape(outputs) == (5, nbest) and scores.shape == (5, nbest)
    expected, expected_scores = model.generate(
        batch[:4],
        vocabulary,
        return_scores=True,
        jit_compile=False,
        num_return_sequences=nbest,
        **settings,
    )
    if beam_size == 1:  # greedy: one hypothesis, not a list
        expected = [[e] for e in expected]
        expected_scores = [[s] for s in expected_scores]
    assert outputs[:4] == expected
    np.testing.assert_allclose(scores[:4], expected_scores, atol=1e-4)
    assert outputs[4] == [""] * nbest and scores[4].tolist() == [0.0] * nbest
    # Best first; column 0 is serving_default's answer.
    assert np.all(np.diff(scores[:4], axis=1) <= 0)
    best = module.serve_strings(tf.constant(batch))
    assert [row[0] for row in outputs] == [
        x.decode() for x in best["outputs"].numpy()
    ]
    np.testing.assert_allclose(scores[:, 0], best["scores"], atol=1e-5)
    if nbest > 1:  # distinct hypotheses (not one copied N times)
        assert any(len(set(row)) > 1 for row in outputs[:4])


def test_no_nbest_signature_without_num_return_sequences():
    vocabulary = tiny_vocabulary()
    module = ServingModule(tiny_student(vocabulary), vocabulary, **SETTINGS)
    assert sorted(module.signatures()) == ["serve_token_ids", "serving_default"]
    assert module.get_config()["num_return_sequences"] is None


def test_constraints_are_served_as_generate_applies_them():
    vocabulary = tiny_vocabulary()
    model = tiny_student(vocabulary, seed=1)
    constraints = dict(min_length=6, no_repeat_ngram_size=2)
    module = ServingModule(model, vocabulary, **SETTINGS, **constraints)
    batch = sentences()[:4]
    out = module.serve_strings(tf.constant(batch))
    got = [x.decode() for x in out["outputs"].numpy()]
    for jit_compile in (False, True):
        expected, scores = model.generate(
            batch,
            vocabulary,
            return_scores=True,
            jit_compile=jit_compile,
            **SETTINGS,
            **constraints,
        )
        assert got == expected, jit_compile
        np.testing.assert_allclose(out["scores"], scores, atol=1e-4)
    plain = model.generate(batch, vocabulary, jit_compile=False, **SETTINGS)
    assert plain != got  # the constraints changed some output
    # In ids: >= 6 WordPieces before EOS, no bigram twice (BOS included).
    ids = model.generate(
        vocabulary.tokenize(batch).to_list(),
        jit_compile=False,
        **SETTINGS,
        **constraints,
    )
    for row in ids:
        assert len(row) >= 6, row
        grams = list(zip([vocabulary.bos_id] + row, row))
        assert len(grams) == len(set(grams)), row
    config = module.get_config()
    assert config["min_length"] == 6 and config["no_repeat_ngram_size"] == 2


@pytest.mark.slow
def test_saved_nbest_loads_without_bertkd_tf(tmp_path):
    vocabulary = tiny_vocabulary()
    model = tiny_student(vocabulary)
    path = str(tmp_path / "1")
    ServingModule(
        model, vocabulary, num_return_sequences=3, search_shards=2, **SETTINGS
    ).save(path)
    batches = [sentences()[:5] + ["", "ein hund"], []]
    result = subprocess.run(
        [sys.executable, "-c", LOADER, path],
        input=json.dumps(batches),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = [x for x in result.stdout.splitlines() if x.startswith("ANSWER")]
    answer = json.loads(line[-1][len("ANSWER") :])
    assert answer["imported_bertkd_tf"] is False
    assert answer["signatures"] == [
        "serve_nbest",
        "serve_token_ids",
        "serving_default",
    ]
    first, empty = answer["nbest"]
    assert first["shapes"] == [[7, 3], [7, 3]]
    expected, scores = model.generate(
        sentences()[:5] + ["ein hund"],
        vocabulary,
        return_scores=True,
        jit_compile=False,
        num_return_sequences=3,
        **SETTINGS,
    )
    assert first["outputs"][:5] + first["outputs"][6:] == expected
    got_scores = first["scores"][:5] + first["scores"][6:]
    np.testing.assert_allclose(got_scores, scores, atol=1e-4)
    assert first["outputs"][5] == ["", "", ""]
    assert first["scores"][5] == [0.0, 0.0, 0.0]
    assert empty["shapes"] == [[0, 3], [0, 3]]
    with open(os.path.join(path, "assets.extra", "bertkd_export.json")) as f:
        assert json.load(f)["num_return_sequences"] == 3

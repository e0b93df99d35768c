"""The published size and md5 of a file in a Zenodo record, read from the record's file listing.

Zenodo computes an md5 for every file it stores and serves it with the size in the record's listing
(`/api/records/ID/files`: `{"entries": [{"key", "size", "checksum": "md5:...", ...}]}`; the record itself,
`/api/records/ID`, lists the same under "files"). A HEAR 2021 task tarball is verified against these values, read
from Zenodo just before the download, so maebench never carries a checksum it could not check.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from maebench.errors import MaebenchError

TIMEOUT_S = 60


def listing_url(site: str, record: str) -> str:
    return f"{site.rstrip('/')}/api/records/{record}/files"


def read_listing(url: str) -> list[dict[str, Any]]:
    """The file entries of a record's listing at `url`."""
    request = urllib.request.Request(url, headers={"User-Agent": "maebench", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310 (the source table's URL)
            data = json.loads(response.read().decode("utf-8"))
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise MaebenchError(f"cannot read Zenodo's file listing {url} ({reason}): check the network or --mirror, "
                            "or download the tarball yourself and pass it with --from") from None
    except (UnicodeDecodeError, ValueError):
        raise MaebenchError(f"Zenodo's file listing {url} is not JSON; check --mirror, or pass the tarball with "
                            "--from") from None
    entries = data.get("entries", data.get("files")) if isinstance(data, dict) else None
    if isinstance(entries, dict):  # some record serialisations key the entries by file name
        entries = [{"key": key, **value} for key, value in entries.items() if isinstance(value, dict)]
    if not isinstance(entries, list):
        raise MaebenchError(f"Zenodo's file listing {url} has no file entries; check --mirror")
    return [entry for entry in entries if isinstance(entry, dict)]


def published_sums(url: str, filename: str) -> tuple[int, str]:
    """(size in bytes, md5) that the listing at `url` publishes for `filename`."""
    for entry in read_listing(url):
        if entry.get("key") != filename:
            continue
        algorithm, _, digest = str(entry.get("checksum", "")).partition(":")
        size = entry.get("size")
        if algorithm != "md5" or len(digest) != 32 or not isinstance(size, int):
            raise MaebenchError(f"Zenodo's listing {url} gives {filename} no md5 and size ({entry.get('checksum')!r}, "
                                f"{size!r}); pass the tarball with --from")
        return size, digest.lower()
    raise MaebenchError(f"Zenodo's listing {url} has no file {filename}; the record changed: pass the tarball "
                        "with --from")

"""Storage at the bottom: URLs to filesystems with our object-store retries, and the commit protocol.

Imports nothing of ours; every package that reads or writes a URL builds on it (docs/architecture.md,
"Object storage retries" and "Write whole, then commit").

Public API:
    url_to_fs, open_file, is_local, S3_CONFIG_DEFAULTS                       -- storage.filesystem
    put_whole, write_committed, remove, read_json, read_verified, sha256_hex,
    is_local_filesystem                                                      -- storage.commit
"""

from storage.commit import (
    is_local_filesystem,
    put_whole,
    read_json,
    read_verified,
    remove,
    sha256_hex,
    write_committed,
)
from storage.filesystem import S3_CONFIG_DEFAULTS, is_local, open_file, url_to_fs

__all__ = [
    "S3_CONFIG_DEFAULTS",
    "is_local",
    "is_local_filesystem",
    "open_file",
    "put_whole",
    "read_json",
    "read_verified",
    "remove",
    "sha256_hex",
    "url_to_fs",
    "write_committed",
]

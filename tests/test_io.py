"""`rankwise.io` helpers not covered through their callers."""

from __future__ import annotations

import hashlib

from rankwise import io


def test_sha256_file_equals_hashlib_across_chunk_boundaries(tmp_path):
    """The file is read 1 MiB at a time: an empty file, one byte, exactly 1 MiB and 2.5 MiB + 1 byte
    all hash as hashlib does over the whole bytes at once."""
    pattern = bytes(range(251))  # a period that does not divide 1 MiB, so chunks differ
    for size in (0, 1, 1 << 20, (5 << 19) + 1):
        data = (pattern * (size // len(pattern) + 1))[:size]
        path = tmp_path / f"f{size}"
        path.write_bytes(data)
        assert io.sha256_file(path) == hashlib.sha256(data).hexdigest()
        assert io.sha256_file(str(path)) == hashlib.sha256(data).hexdigest()


def test_adapter_folders_and_checkpoints_share_one_checksum_reader():
    from rankwise.adapters import adapter_files
    from rankwise.engine import checkpoint

    assert adapter_files.sha256_file is io.sha256_file and checkpoint.sha256 is io.sha256_file

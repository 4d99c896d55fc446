"""Compression of channel datasets: the filter names a writer accepts and when they apply.

Pure h5py (plus hdf5plugin); :mod:`scanstream.writer.nexus` re-exports the public names.

=================  ==========================================================  ============
name               filter                                                      readers need
=================  ==========================================================  ============
``none``           no filter                                                   nothing
``gzip``           deflate level 4 with shuffle (blisswriter's choice)         nothing
``lz4``            LZ4 (hdf5plugin)                                            hdf5plugin
``bitshuffle-lz4`` bitshuffle + LZ4 (hdf5plugin; the default: the fastest)     hdf5plugin
``zstd``           Zstandard (hdf5plugin)                                      hdf5plugin
=================  ==========================================================  ============

Only datasets whose chunk holds at least :data:`COMPRESS_MIN_CHUNK_BYTES` are compressed
(spectra, images, long scalar channels): a small chunk gains too little to be worth making
every reader load a plugin. A reader without hdf5plugin reading a dataset compressed with a
plugin filter gets ``OSError: Can't read data (can't open directory ...)`` or "required filter
'...' is not registered"; the fix is ``pip install hdf5plugin`` and ``import hdf5plugin``
before opening the file (silx and PyMca import it themselves).
"""

from __future__ import annotations

from typing import Any

from ...exceptions import NexusLayoutError

__all__ = [
    "COMPRESSIONS",
    "COMPRESS_MIN_CHUNK_BYTES",
    "DEFAULT_COMPRESSION",
    "compression_options",
]

#: The compression names a writer accepts (``--compression``).
COMPRESSIONS = ("none", "gzip", "lz4", "bitshuffle-lz4", "zstd")
#: What the writer uses when it is not told.
DEFAULT_COMPRESSION = "bitshuffle-lz4"
#: Chunks smaller than this are not compressed.
COMPRESS_MIN_CHUNK_BYTES = 64 << 10


def compression_options(compression: str | None, chunk_bytes: int) -> dict[str, Any]:
    """Keyword arguments of :meth:`h5py.Group.create_dataset` for ``compression``.

    Parameters
    ----------
    compression : str or None
        One of :data:`COMPRESSIONS` (None = ``"none"``); ``"lzf"`` is accepted too (h5py's
        own filter).
    chunk_bytes : int
        Bytes of one chunk of the dataset; below :data:`COMPRESS_MIN_CHUNK_BYTES` no filter.

    Raises
    ------
    NexusLayoutError
        An unknown name.
    """
    name = "none" if compression is None else str(compression).lower()
    if name not in (*COMPRESSIONS, "lzf"):
        raise NexusLayoutError(
            f"unknown compression {compression!r}; use one of {', '.join(COMPRESSIONS)}"
        )
    if name == "none" or chunk_bytes < COMPRESS_MIN_CHUNK_BYTES:
        return {}
    if name == "gzip":
        return {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    if name == "lzf":
        return {"compression": "lzf"}
    import hdf5plugin  # registers the filters with libhdf5 for this process

    if name == "lz4":
        return dict(hdf5plugin.LZ4())
    if name == "zstd":
        return dict(hdf5plugin.Zstd())
    return dict(hdf5plugin.Bitshuffle(cname="lz4"))

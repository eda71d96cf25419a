"""Errors raised by the chunk store layer.

Every error carries a one-line message fit to show a user; the CLI prints ``str(exc)``.
"""

from __future__ import annotations


class ChunkstoreError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidIdError(ChunkstoreError, ValueError):
    """A chunk address, owner id or other identifier is malformed (refused before any I/O)."""


class EnvelopeError(ChunkstoreError):
    """An encrypted envelope cannot be opened."""


class TruncatedEnvelopeError(EnvelopeError):
    """The envelope is shorter than its fixed header and tag."""


class UnsupportedVersionError(EnvelopeError):
    """The envelope or record was written by an unknown format version."""


class WrongAddressError(EnvelopeError):
    """The envelope is intact but belongs to another chunk address (swapped or misfiled)."""


class TamperedEnvelopeError(EnvelopeError):
    """Authentication failed: the bytes were modified or the key is wrong."""


class WrongPassphraseError(ChunkstoreError):
    """The passphrase does not unwrap the master key."""


class KeyFileError(ChunkstoreError):
    """A wrapped key file is malformed."""


class QuotaExceededError(ChunkstoreError):
    """Storing the chunk would exceed the capacity this node lends."""


class DiskFullError(QuotaExceededError):
    """The disk under the store has no room for the chunk, whatever the quota still allows."""


class ChunkNotFoundError(ChunkstoreError, KeyError):
    """The store holds no chunk under that owner and address."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "chunk not found"


class CorruptChunkError(ChunkstoreError):
    """A stored chunk failed its integrity check."""


class CatalogFormatError(ChunkstoreError):
    """Catalog bytes are malformed or from an unknown version."""


class SizeFormatError(ChunkstoreError, ValueError):
    """A human-written size such as ``10GB``, or a duration such as ``10m``, cannot be parsed."""

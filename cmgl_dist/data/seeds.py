"""Seeds derived from values (seed, epoch, stream, sample key, ...), equal in every process.

Python's own hash() of a str is salted per process, so it cannot seed DataLoader workers or a
resumed run consistently.
"""
import hashlib


def seed_of(*parts) -> int:
    """A 64-bit seed from the repr of `parts` (ints and strs)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")

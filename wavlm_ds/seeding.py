"""The project's one seed mixer: every generator's seed is hashed from (seed, purpose, ...)."""
from __future__ import annotations

import hashlib


def hash_seed(*keys: object) -> int:
    """A 64-bit seed hashed from keys (e.g. seed, epoch, rank, worker): no correlated
    neighbours, the same in every process."""
    return int.from_bytes(hashlib.blake2b(repr(keys).encode(), digest_size=8).digest(), "little")

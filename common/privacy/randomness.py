"""Explicit random streams: one generator per component, a fresh stream per use.

DP noise is only noise if it is never reused. A seeded component therefore never hands
the same stream to two mechanisms: every stream is derived from the seed *and* a key that
names the use (mechanism, run, round, the site's ledger position), through NumPy's
``SeedSequence``, whose children are statistically independent. Without a seed the
operating system's entropy is used and the key only labels the stream.

Nothing here touches PyTorch's or NumPy's global generators.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

StreamKey = int | str


def _key_word(part: StreamKey) -> int:
    """A stable 32-bit word for one key part (Python's ``hash`` is salted per process)."""
    if isinstance(part, int) and not isinstance(part, bool) and 0 <= part < 2**32:
        return part
    return int.from_bytes(hashlib.sha256(repr(part).encode()).digest()[:4], "little")


def seed_sequence(seed: int | None, *key: StreamKey) -> np.random.SeedSequence:
    """The stream for ``key`` under ``seed``; fresh OS entropy when ``seed`` is None."""
    if seed is None:
        return np.random.SeedSequence()
    return np.random.SeedSequence(entropy=seed, spawn_key=tuple(_key_word(part) for part in key))


def numpy_generator(seed: int | None, *key: StreamKey) -> np.random.Generator:
    return np.random.default_rng(seed_sequence(seed, *key))


def torch_generator(seed: int | None, *key: StreamKey, device: str | torch.device = "cpu") -> torch.Generator:
    """A PyTorch generator on ``device`` seeded from the stream for ``key``."""
    state = int(seed_sequence(seed, *key).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed(state)
    return generator

"""Explicit random streams: one generator per component, a fresh stream per use.

DP noise is only noise if it is never reused and never reproducible from anything
published. Without a seed (the default everywhere, simulations included) every stream
comes from the operating system's entropy and the key only labels it. A seed makes runs
reproducible for whoever holds it; it is never written into a release or a message. A
seeded component still never hands the same stream to two mechanisms: every stream is
derived from the seed *and* a key that names the use (a nonce created with each ledger or
fit, the mechanism, the ledger position), through NumPy's ``SeedSequence``, whose children
are statistically independent.

Nothing here touches PyTorch's or NumPy's global generators. :func:`gaussian_counts` is the
one place where a stream's Gaussian noise is added to counts, so that its output's rounding
(against floating-point leaks) is in one place too.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

StreamKey = int | str | None


def _key_word(part: StreamKey) -> int:
    """A stable key word for one key part (Python's ``hash`` is salted per process): small
    integers as they are, anything else as 128 bits of its SHA-256, so a random nonce keeps
    its entropy."""
    if isinstance(part, int) and not isinstance(part, bool) and 0 <= part < 2**32:
        return part
    return int.from_bytes(hashlib.sha256(repr(part).encode()).digest()[:16], "little")


def seed_sequence(seed: int | None, *key: StreamKey) -> np.random.SeedSequence:
    """The stream for ``key`` under ``seed``; fresh OS entropy when ``seed`` is None."""
    if seed is None:
        return np.random.SeedSequence()
    return np.random.SeedSequence(entropy=seed, spawn_key=tuple(_key_word(part) for part in key))


def _word63(sequence: np.random.SeedSequence) -> int:
    """A non-negative 63-bit integer from ``sequence`` (what torch's manual_seed accepts)."""
    return int(sequence.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


_NONCE = re.compile(r"[0-9a-f]{32}")


def is_stream_nonce(value: str) -> bool:
    """Whether ``value`` is a stream nonce as fedsyn prints them (32 hex digits)."""
    return _NONCE.fullmatch(value) is not None


def fresh_nonce(given: str | None = None) -> str:
    """A stream nonce for a new ledger, fit or seeded simulation: ``given`` repeats an earlier
    one exactly; otherwise 128 fresh random bits, so that two runs never share noise even with
    one seed (two releases of one stream would cancel it). A given nonce must be one fedsyn
    printed (32 hex digits): a made-up short one ('1') is easily chosen twice. Raises ValueError."""
    if not given:
        return secrets.token_hex(16)
    if not is_stream_nonce(given):
        raise ValueError("a stream nonce is the 32 hex digits a seeded run printed (`--stream-nonce` repeats that "
                         "run); leave it out for a fresh stream")
    return given


def bound_to_inputs(nonce: str, *inputs: str) -> str:
    """The key a seeded run's streams are drawn under: its ``nonce`` bound to digests of
    everything that feeds its mechanisms (each extract's rows, the schema, the budget and the
    settings). A nonce given to repeat a run repeats it on the same inputs only: rerun on an
    extract one patient apart, or at another epsilon, the same draws would come back scaled
    and the two releases' difference would give back that patient, noise-free (the sixth
    review, through ``--stream-nonce``). Of private rows: keep it as the nonce is kept, in no
    release and no message."""
    digest = hashlib.sha256(nonce.encode())
    for part in inputs:
        digest.update(len(part).to_bytes(8, "little") + part.encode())
    return digest.hexdigest()[:32]


def derived_seed(seed: int, *key: StreamKey) -> int:
    """A seed for a component of a seeded run (e.g. one simulated site), from the run's seed."""
    return _word63(seed_sequence(seed, "derived-seed", *key))


def derived_nonce(seed: int, *key: StreamKey) -> str:
    """A 128-bit stream nonce for a seeded run's ledger, reproducible from the run's seed."""
    return seed_sequence(seed, "derived-nonce", *key).generate_state(4).tobytes().hex()


def numpy_generator(seed: int | None, *key: StreamKey) -> np.random.Generator:
    """A NumPy generator on the stream for ``key``."""
    return np.random.default_rng(seed_sequence(seed, *key))


def mechanism_stream(seed: int | None, *key: StreamKey) -> np.random.Generator:
    """The DP-SGD mechanism's own stream for ``key`` (its Poisson samples and Gaussian noise):
    NumPy's PCG64 under a ``SeedSequence``, 128 bits of entropy when unseeded. Apart from the
    PyTorch stream of the same key (labelled differently), whose seed is one 64-bit word of which
    PyTorch's CPU generator keeps 32: trying 2^32 seeds must not give the noise away."""
    return numpy_generator(seed, *key, "mechanism")


def torch_generator(seed: int | None, *key: StreamKey, device: str | torch.device = "cpu") -> torch.Generator:
    """A PyTorch generator on ``device`` seeded from the stream for ``key``: for model
    initialisation, generated rows and post-processing. Its seed is one 63-bit word (PyTorch's
    CPU generator keeps 32 bits of it), so it never draws a DP mechanism's noise:
    :func:`mechanism_stream` does."""
    import torch  # here, so that checking a nonce or a seed does not load PyTorch
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed(_word63(seed_sequence(seed, *key)))
    return generator


def numpy_from_torch(generator: torch.Generator) -> np.random.Generator:
    """A NumPy generator drawn from ``generator``'s stream (one 62-bit word of it): NumPy work in
    a component whose stream is a PyTorch generator (the release's permutations), never a DP
    mechanism's noise. Its states are no more than ``generator``'s, 2^32 on the CPU (see
    :func:`torch_generator`; helper-113): whoever guessed one would regenerate only a draw
    that reads DP outputs already in the release (post-processing), never a noise draw."""
    import torch
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator,
                                                   device=generator.device)))


NOISE_GRID = 2.0**-10  # of the noise's standard deviation


def gaussian_counts(exact: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """The Gaussian mechanism on counts: ``exact`` plus noise of ``std``, rounded to a grid of
    ``std / 1024``. A float64 sum's lowest bits depend on the exact count it was added to
    (floating-point noise is not the real Gaussian: Mironov 2012; Jin et al. 2022), so a reader
    of the raw sums could tell some neighbouring counts apart (helper-90 F5). The grid is far
    coarser than those bits and far finer than the noise: rounding to it is post-processing
    that leaves none of them and changes no table's use. Without noise (a test's exact tables),
    there is no grid."""
    return on_noise_grid(exact + rng.normal(0.0, std, size=exact.shape), std)


def on_noise_grid(noisy: np.ndarray, std: float) -> np.ndarray:
    """``noisy`` counts (noise of ``std``) rounded to the grid of ``std / 1024``
    (:func:`gaussian_counts`): also for counts combined from noisy ones before they leave a
    site, whose float arithmetic should carry no more low bits than the noise it combines."""
    step = std * NOISE_GRID
    return np.asarray(np.round(noisy / step) * step, dtype=float) if step > 0 else noisy

"""Exact duplicates: samples whose decoded pixels are the same (equal 128-bit hashes), found by sorting the hashes
(no image compared with every other).

Within an identity the first copy is kept. Across identities at least one label is wrong: the copy kept is the
one in the identity whose centre it is closest to, the copies in other identities are flagged."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Duplicates:
    within: np.ndarray  # indices flagged: another copy in the same identity is kept
    across: np.ndarray  # indices flagged: a copy in another identity is kept
    groups: list[list[int]]  # every set of samples with the same pixels (the kept one first)


def duplicate_sets(hashes: np.ndarray, usable: np.ndarray) -> list[np.ndarray]:
    """The index sets (two or more, ascending) of usable samples with equal hashes."""
    indices = np.flatnonzero(usable)
    keys = np.ascontiguousarray(hashes[indices]).view(np.dtype((np.void, hashes.dtype.itemsize * hashes.shape[1])))
    _, inverse, counts = np.unique(keys.ravel(), return_inverse=True, return_counts=True)
    repeated = np.flatnonzero(counts > 1)
    if len(repeated) == 0:
        return []
    members = np.isin(inverse, repeated)
    order = np.argsort(inverse[members], kind="stable")
    grouped, sizes = indices[members][order], counts[repeated]
    return np.split(grouped, np.cumsum(sizes)[:-1])


def find_duplicates(hashes: np.ndarray, labels: np.ndarray, cosine_to_own_centre: np.ndarray,
                    usable: np.ndarray) -> Duplicates:
    """Flag all but one copy of each image (see the module docstring)."""
    within, across, groups = [], [], []
    for members in duplicate_sets(hashes, usable):
        keeper = members[np.argmax(cosine_to_own_centre[members])]
        for index in members:
            if index == keeper:
                continue
            (within if labels[index] == labels[keeper] else across).append(int(index))
        groups.append([int(keeper)] + [int(i) for i in members if i != keeper])
    return Duplicates(np.array(sorted(within), np.int64), np.array(sorted(across), np.int64), groups)

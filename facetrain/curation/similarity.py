"""Pairs of rows whose cosine is above a threshold, computed block by block: memory is ``block x rows``, never
``rows x rows`` (93k identity centres against themselves: 23 blocks of 4096)."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

BLOCK = 4096


def similar_pairs(a: np.ndarray, threshold: float, b: Optional[np.ndarray] = None,
                  block: int = BLOCK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(i, j, cosine)`` of the rows ``a[i]``, ``b[j]`` (normalised) with cosine above ``threshold``; with ``b``
    None, the pairs ``i < j`` of ``a`` with itself."""
    self_pairs = b is None
    right = torch.from_numpy(np.ascontiguousarray(a if self_pairs else b, dtype=np.float32))
    found_i, found_j, found_cos = [], [], []
    for start in range(0, len(a), block):
        left = torch.from_numpy(np.ascontiguousarray(a[start : start + block], dtype=np.float32))
        cos = left @ right.T
        if self_pairs:  # keep j > i only
            rows = torch.arange(start, start + len(left)).unsqueeze(1)
            cos[torch.arange(len(right)).unsqueeze(0) <= rows] = -2.0
        i, j = torch.nonzero(cos > threshold, as_tuple=True)
        found_i.append((i + start).numpy())
        found_j.append(j.numpy())
        found_cos.append(cos[i, j].numpy())
    if not found_i:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_cos)


def merge_groups(pairs_i: np.ndarray, pairs_j: np.ndarray, count: int) -> np.ndarray:
    """``root[c]``: the smallest identity each identity is joined to through the pairs (union-find)."""
    parent = np.arange(count)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in zip(pairs_i.tolist(), pairs_j.tolist()):
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return np.array([find(c) for c in range(count)])

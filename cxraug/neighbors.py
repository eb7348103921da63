"""Exact nearest neighbours of query rows over a reference set that may not fit in memory.

Shared by evaluation (memorization), training (realism tracking) and synthesis (the privacy
filter), so it lives below all of them. NO TensorFlow. Euclidean, by blocked matrix products
``|q|^2 + |r|^2 - 2 q.r`` in float32, then the few best candidates of each query re-measured
exactly in float64, so an exact copy has distance exactly 0 and the answer for a query does not
depend on which other queries share its block.
"""

from __future__ import annotations

import numpy as np

#: Bytes one block of a distance matrix may take (float32); keeps k-NN memory bounded.
BLOCK_BYTES = 64 * 1024 * 1024


def flat32(arr: np.ndarray) -> np.ndarray:
    """``[N, ...]`` -> ``[N, D]`` float32 (no copy when it already is)."""
    arr = np.asarray(arr)
    return arr.reshape(len(arr), -1).astype(np.float32, copy=False)


class NearestNeighbors:
    """Running nearest neighbour of each query over reference blocks fed one at a time.

    Lets a caller stream a reference set far larger than memory (e.g. a cache's training split)
    block by block: ``update(block, offset)`` for each block, then ``.index`` / ``.distance``.
    Candidates are found in float32 and the best ``refine`` of each block re-measured in float64,
    so an exact copy scores exactly 0.
    """

    def __init__(self, query: np.ndarray, refine: int = 4) -> None:
        self.query = flat32(query)
        self.refine = refine
        self.index = np.full(len(self.query), -1, dtype=np.int64)
        self.distance = np.full(len(self.query), np.inf)
        self._qnorm = (self.query * self.query).sum(1)

    def update(self, reference: np.ndarray, offset: int = 0) -> None:
        ref = flat32(reference)
        if len(ref) == 0:
            return
        if ref.shape[1] != self.query.shape[1]:
            raise ValueError(f"dimension mismatch: {ref.shape[1]} vs {self.query.shape[1]}")
        rnorm = (ref * ref).sum(1)
        k = min(self.refine, len(ref))
        dim = ref.shape[1]
        ref_rows = min(len(ref), 8192)
        # a block of distances (q_rows x ref_rows float32) and the exact re-measurement
        # (q_rows x k x dim float64) both stay under BLOCK_BYTES
        q_rows = max(1, min(1024, BLOCK_BYTES // (4 * ref_rows),
                            BLOCK_BYTES // (8 * k * dim)))
        for q0 in range(0, len(self.query), q_rows):
            q = self.query[q0:q0 + q_rows]
            cand_d: list[np.ndarray] = []
            cand_i: list[np.ndarray] = []
            for r0 in range(0, len(ref), ref_rows):
                block = self._qnorm[q0:q0 + len(q), None] + rnorm[None, r0:r0 + ref_rows]
                block -= 2.0 * (q @ ref[r0:r0 + ref_rows].T)
                kk = min(k, block.shape[1])
                part = np.argpartition(block, kk - 1, axis=1)[:, :kk]
                cand_i.append(part + r0)
                cand_d.append(np.take_along_axis(block, part, axis=1))
            idx = np.concatenate(cand_i, axis=1)
            dist = np.concatenate(cand_d, axis=1)
            if idx.shape[1] > k:
                sel = np.argpartition(dist, k - 1, axis=1)[:, :k]
                idx = np.take_along_axis(idx, sel, axis=1)
            # exact re-measurement of the candidates in float64
            exact = np.sqrt(((q.astype(np.float64)[:, None, :]
                              - ref[idx].astype(np.float64)) ** 2).sum(-1))
            best = exact.argmin(axis=1)
            best_d = exact[np.arange(len(q)), best]
            best_i = idx[np.arange(len(q)), best] + offset
            rows = slice(q0, q0 + len(q))
            better = best_d < self.distance[rows]
            self.distance[rows] = np.where(better, best_d, self.distance[rows])
            self.index[rows] = np.where(better, best_i, self.index[rows])


def nearest_neighbors(query: np.ndarray, reference: np.ndarray,
                      refine: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Index into ``reference`` and Euclidean distance of each query row's nearest neighbour."""
    nn = NearestNeighbors(query, refine=refine)
    nn.update(reference)
    return nn.index, nn.distance

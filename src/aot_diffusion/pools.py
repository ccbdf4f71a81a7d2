"""The training pools of one rank: a deterministic stream of images (augmented), their noise and its pairing
(aot.py), each pool prepared in a background thread while the previous one trains."""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from . import aot

__all__ = ["Pool", "PoolSource"]


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:7], "little")


@dataclass
class Pool:
    index: int
    images: torch.Tensor
    noise: torch.Tensor
    labels: Optional[torch.Tensor]          # one-hot, or None when unconditional
    augment_labels: Optional[torch.Tensor]
    pair_ms: float = 0.0
    paired_distance: float = float("nan")   # mean ||y_i - n_i|| after pairing
    random_distance: float = float("nan")   # ... for the unpaired noise


class PoolSource:
    """Deterministic stream of (optionally paired) pools for one rank.

    Image order: per epoch e a permutation of the dataset seeded by (seed, rank, e); pool k takes
    positions [k * pool_size, (k + 1) * pool_size) of the concatenated epochs. Noise and augmentation
    for pool k are seeded by (seed, rank, k).
    """

    def __init__(self, images: torch.Tensor, labels: Optional[torch.Tensor], *, pool_size: int,
                 solver: str = "auto", pairing: str = "none", pairing_options: Optional[dict] = None,
                 knn_k: int = 4, seed: int = 0, rank: int = 0, num_classes: int = 0,
                 augment: Optional[Callable] = None, device: str = "cpu"):
        if images.ndim != 4:
            raise ValueError(f"images must be [N, C, H, W], got {list(images.shape)}")
        if labels is not None and labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels has {labels.shape[0]} entries but there are {images.shape[0]} images")
        self.images, self.labels = images, labels
        self.pool_size, self.solver = pool_size, solver
        self.pairing, self.pairing_options, self.knn_k = pairing, dict(pairing_options or {}), knn_k
        self.aot_on = pairing != "none"  # EDM's pools keep their noise (and time no pairing)
        self.seed, self.rank, self.num_classes = seed, rank, num_classes
        self.augment, self.device = augment, torch.device(device)
        self._perms: dict[int, torch.Tensor] = {}

    def _epoch_perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(_seed("order", self.seed, self.rank, epoch))
            self._perms = {epoch: torch.randperm(self.images.shape[0], generator=g)}
        return self._perms[epoch]

    def indices(self, k: int) -> torch.Tensor:
        n = self.images.shape[0]
        pos, end, out = k * self.pool_size, (k + 1) * self.pool_size, []
        while pos < end:  # a pool may straddle an epoch boundary
            epoch, offset = divmod(pos, n)
            take = min(n - offset, end - pos)
            out.append(self._epoch_perm(epoch)[offset:offset + take])
            pos += take
        return torch.cat(out)

    def make(self, k: int) -> Pool:
        idx = self.indices(k)
        g = torch.Generator().manual_seed(_seed("pool", self.seed, self.rank, k))
        images = self.images[idx].to(torch.float32)
        augment_labels = None
        if self.augment is not None:  # on the CPU, with the pool's own generator
            images, augment_labels = self.augment(images, generator=g)
            augment_labels = augment_labels.to(self.device)
        images = images.to(self.device)
        noise = torch.randn(images.shape, generator=g).to(self.device)
        labels = ids = None
        if self.labels is not None and self.num_classes:
            ids = self.labels[idx].to(self.device)
            labels = torch.nn.functional.one_hot(ids.long(), self.num_classes).float()
        pool = Pool(k, images, noise, labels, augment_labels)
        if self.aot_on:
            t0 = time.perf_counter()
            pool.random_distance = aot.mean_distance(images, noise)
            pool.noise = aot.pair(self.pairing, images, noise, ids, generator=g, solver=self.solver, knn_k=self.knn_k,
                                  options=self.pairing_options)
            pool.pair_ms = 1000 * (time.perf_counter() - t0)
            pool.paired_distance = aot.mean_distance(images, pool.noise)
        else:
            pool.random_distance = pool.paired_distance = aot.mean_distance(images, noise)
        return pool


class _Prefetcher:
    """Prepares pool k+1 (augment, draw noise, pair) in a thread while pool k trains."""

    def __init__(self, source: PoolSource, first: int, enabled: bool, last: Optional[int] = None):
        # last: the last pool training will use; none is paired beyond it (at the end of training a large
        # pool's solve would only take CPU from other jobs).
        self.source, self.first, self.next_index, self.enabled, self.last = source, first, first, enabled, last
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread = None
        if enabled:
            self._thread = threading.Thread(target=self._run, daemon=True, name="aot-pool-prefetch")
            self._thread.start()

    def _run(self):
        k = self.first
        while not self._stop.is_set() and (self.last is None or k <= self.last):
            try:
                item = self.source.make(k)
            except BaseException as exc:  # surfaced in the training thread
                item = exc
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return
            k += 1

    def get(self) -> Pool:
        k, self.next_index = self.next_index, self.next_index + 1
        if not self.enabled or (self.last is not None and k > self.last):
            return self.source.make(k)
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

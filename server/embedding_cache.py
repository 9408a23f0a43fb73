"""LRU cache of SAM image embeddings, bounded in bytes, keyed by (image key, SAM model).

The server's image key is (user id, sha256) (server.pipeline.cache_key): one user's upload never makes
another user's identical upload faster."""
from __future__ import annotations

import threading
from collections import OrderedDict

from models.segmentation import Embedding


class EmbeddingCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str], Embedding] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def get(self, sha256: str, model: str) -> Embedding | None:
        with self._lock:
            item = self._items.get((sha256, model))
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end((sha256, model))
            self.hits += 1
            return item

    def put(self, sha256: str, embedding: Embedding) -> None:
        if embedding.nbytes > self.max_bytes:
            return
        key = (sha256, embedding.model)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._items[key] = embedding
            self._bytes += embedding.nbytes
            while self._bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= evicted.nbytes

    def drop_model(self, model: str) -> int:
        """Forget every embedding of `model` (its weights or kept stages changed in a model swap)."""
        with self._lock:
            keys = [k for k in self._items if k[1] == model]
            for key in keys:
                self._bytes -= self._items.pop(key).nbytes
            return len(keys)

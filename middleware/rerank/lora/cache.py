"""The bounded in-process cache of per-user adapters (LRU).

Keys are whatever the caller uses to name an adapter. The proxy uses
`(tenant, user, persona version, persona version id)`: a new persona version, a rollback, or a user
forgotten and created again (whose versions restart at 1 but with new version ids) all name a
different key, so a stale adapter can never be served, on any replica; old entries just age out.
`drop_where` frees a forgotten user's entries at once in the process that handled the forget.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any


@dataclass
class CachedAdapter:
    state: dict[str, Any]  # LoRA tensors by peft name, on the model's device
    meta: dict[str, str]  # the adapter's safetensors metadata

    @property
    def nbytes(self) -> int:
        return int(sum(v.numel() * v.element_size() for v in self.state.values()))


class AdapterCache:
    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._items: OrderedDict[Hashable, CachedAdapter] = OrderedDict()

    def get(self, key: Hashable | None) -> CachedAdapter | None:
        if key is None:
            return None
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: Hashable, item: CachedAdapter) -> list[Hashable]:
        """Store `item`; returns the keys evicted to stay within `size`."""
        self._items[key] = item
        self._items.move_to_end(key)
        evicted = []
        while len(self._items) > self.size:
            old, _ = self._items.popitem(last=False)
            evicted.append(old)
        return evicted

    def drop_where(self, predicate: Callable[[Hashable], bool]) -> list[Hashable]:
        dropped = [key for key in self._items if predicate(key)]
        for key in dropped:
            del self._items[key]
        return dropped

    def clear(self) -> None:
        self._items.clear()

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list[Hashable]:
        return list(self._items)

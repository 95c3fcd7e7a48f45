"""`persona import FILE --format ...`: stream a JSONL(.gz) preference file into users' logs.

Lines are read one by one (never the whole file in memory), buffered per user and written in batches:
one idempotent Lua call per user per batch, users written concurrently. Record ids are content-derived
(`PreferencePair.stable_id`), so re-importing a file adds nothing. A bad line is reported with its
line number and never stops the import. Progress goes to stderr (tqdm).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from middleware.config import Settings
from middleware.errors import ValidationFailed
from middleware.identity import TENANT_RE, validate_user_id
from middleware.json_limits import check_value
from middleware.models import PreferencePair
from middleware.preferences.formats import FORMATS, iter_pairs
from middleware.store.preferences import PreferenceStore

MAX_BAD_LINES_REPORTED = 1000
CONCURRENT_USERS = 16

Record = tuple[str, str, dict[str, Any]]


def to_record(pair: PreferencePair) -> Record:
    validate_user_id(pair.user_id, param="user_id")
    pair_id = pair.stable_id()
    record = pair.model_copy(update={"id": pair_id}).model_dump(mode="json")
    check_value(record)  # the limits every stored record keeps (depth, 64-bit integers)
    return pair_id, "pair", record


class Importer:
    def __init__(self, store: PreferenceStore, tenant: str, *, batch_size: int = 2000) -> None:
        self._store = store
        self._tenant = tenant
        self._batch_size = batch_size
        self._pending: dict[str, list[Record]] = {}
        self._buffered = 0
        self._limit = asyncio.Semaphore(CONCURRENT_USERS)
        self.users: set[str] = set()
        self.imported = 0
        self.duplicates = 0

    async def add(self, user: str, record: Record) -> None:
        self._pending.setdefault(user, []).append(record)
        self.users.add(user)
        self._buffered += 1
        if self._buffered >= self._batch_size:
            await self.flush()

    async def flush(self) -> None:
        pending, self._pending, self._buffered = self._pending, {}, 0

        async def write(user: str, records: list[Record]) -> list[bool]:
            async with self._limit:
                return await self._store.add(self._tenant, user, records)

        for flags in await asyncio.gather(*(write(u, rs) for u, rs in pending.items())):
            new = sum(flags)
            self.imported += new
            self.duplicates += len(flags) - new


async def import_file(
    store: PreferenceStore,
    path: Path,
    *,
    format: str,
    tenant: str,
    batch_size: int = 2000,
    progress: bool = True,
) -> dict[str, Any]:
    if format not in FORMATS:
        raise ValidationFailed(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    if not TENANT_RE.match(tenant):
        raise ValidationFailed(f"invalid tenant name {tenant!r}")
    started = time.perf_counter()
    importer = Importer(store, tenant, batch_size=batch_size)
    bad_lines: list[dict[str, Any]] = []
    bad = lines = 0
    bar = tqdm(desc=f"import {path.name}", unit=" lines", file=sys.stderr, disable=not progress)
    try:
        for number, item in iter_pairs(path, format):
            lines += 1
            bar.update(1)
            try:
                if isinstance(item, Exception):
                    raise item
                await importer.add(item.user_id, to_record(item))
            except Exception as exc:
                bad += 1
                if len(bad_lines) < MAX_BAD_LINES_REPORTED:
                    bad_lines.append({"line": number, "error": _describe(exc)})
        await importer.flush()
    finally:
        bar.close()
    summary: dict[str, Any] = {
        "file": str(path),
        "format": format,
        "tenant": tenant,
        "lines": lines,
        "imported": importer.imported,
        "duplicates": importer.duplicates,
        "bad": bad,
        "users": len(importer.users),
        "seconds": round(time.perf_counter() - started, 3),
        "bad_lines": bad_lines,
    }
    if bad > len(bad_lines):
        summary["bad_lines_truncated"] = True
    return summary


def _describe(exc: Exception) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


async def run_import(
    settings: Settings,
    file: Path,
    *,
    format: str = "native",
    tenant: str = "default",
    batch_size: int = 2000,
    progress: bool = True,
) -> dict[str, Any]:
    """Import a file into the Redis named by the settings (the command line starts a local one
    first where the settings allow it, see `middleware.cli`)."""
    from middleware.store.connection import redis_client

    async with redis_client(settings) as redis:
        return await import_file(
            PreferenceStore(redis),
            Path(file),
            format=format,
            tenant=tenant,
            batch_size=batch_size,
            progress=progress,
        )

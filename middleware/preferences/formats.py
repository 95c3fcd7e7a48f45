"""Reading preference-pair files: native / PersonalRewardBench rows and summarize-from-feedback comparisons.

Files are JSON Lines, optionally gzip-compressed (by the `.gz` suffix). They are read line by line; a
line that cannot be turned into a `PreferencePair` is yielded as the exception, with its 1-based line
number, so one bad row never stops an import.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

import orjson

from middleware.errors import ValidationFailed
from middleware.models import Message, PreferencePair

FORMATS = ("native", "personalrewardbench", "summarize-from-feedback")


def _open(path: Path) -> TextIO:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8")


def _native(row: dict[str, Any]) -> PreferencePair:
    """Native rows and PersonalRewardBench rows share one shape (see the data README)."""
    row = dict(row)
    for side in ("chosen", "rejected"):
        value = row.get(side)
        if isinstance(value, str):  # some exports keep the completion as a bare string
            row[side] = {"role": "assistant", "content": value}
    context = row.get("context")
    if isinstance(context, str):
        row["context"] = [{"role": "user", "content": context}]
    return PreferencePair.model_validate(row)


def _summarize_from_feedback(row: dict[str, Any]) -> PreferencePair:
    """One comparison of OpenAI's summarize-from-feedback release -> a pair with the post as context."""
    info = row["info"]
    summaries = row["summaries"]
    choice = int(row["choice"])
    if choice not in (0, 1) or len(summaries) != 2:
        raise ValueError(f"expected two summaries and choice 0 or 1, got choice={choice!r}")
    post = info.get("post") or info.get("article") or ""
    parts = []
    if info.get("subreddit"):
        parts.append(f"SUBREDDIT: r/{info['subreddit']}")
    if info.get("title"):
        parts.append(f"TITLE: {info['title']}")
    parts.append(f"POST: {post}")
    notes = [str(s.get("note")).strip() for s in summaries if s.get("note")]
    return PreferencePair(
        user_id=str(row["worker"]),
        context=[Message(role="user", content="\n".join(parts))],
        chosen=Message(role="assistant", content=summaries[choice]["text"]),
        rejected=Message(role="assistant", content=summaries[1 - choice]["text"]),
        rationale="\n".join(n for n in notes if n) or None,
        timestamp=row.get("timestamp"),
        source=f"summarize-from-feedback/{row.get('batch') or row.get('split') or ''}".rstrip("/"),
        item_id=str(info["id"]) if info.get("id") is not None else None,
    )


_PARSERS = {
    "native": _native,
    "personalrewardbench": _native,
    "summarize-from-feedback": _summarize_from_feedback,
}


def iter_pairs(path: str | Path, format: str = "native") -> Iterator[tuple[int, PreferencePair | Exception]]:
    """Yield `(line_number, pair_or_exception)` for every non-blank line of a JSONL(.gz) file."""
    if format not in _PARSERS:
        raise ValidationFailed(f"unknown pair format {format!r}; expected one of {', '.join(FORMATS)}")
    parse = _PARSERS[format]
    with _open(Path(path)) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("a row must be a JSON object")
                yield number, parse(row)
            except Exception as exc:  # one bad row is reported, never fatal
                yield number, exc


def load_pairs_by_user(path: str | Path, format: str = "native") -> dict[str, list[PreferencePair]]:
    """All valid pairs of a file grouped by user, in file order. Bad lines are skipped."""
    by_user: dict[str, list[PreferencePair]] = {}
    for _, item in iter_pairs(path, format):
        if isinstance(item, PreferencePair):
            by_user.setdefault(item.user_id, []).append(item)
    return by_user


def time_split(
    pairs: Iterable[PreferencePair], train_fraction: float = 0.7
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Split one user's pairs into (earliest `train_fraction`, latest rest).

    Sorted by timestamp when every pair has one (a stable sort, so equal times keep file order);
    otherwise the original order stands for time. The test part is never empty when there are two or
    more pairs, and the train part never empty when there is at least one.
    """
    items = list(pairs)
    if items and all(p.timestamp for p in items):
        items = sorted(items, key=lambda p: str(p.timestamp))
    n = len(items)
    k = round(n * train_fraction)
    k = min(max(k, 1), n - 1) if n >= 2 else n
    return items[:k], items[k:]

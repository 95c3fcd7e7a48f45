"""Offline evaluation of scorers on per-user preference pairs (docs/METHOD.md §4)."""

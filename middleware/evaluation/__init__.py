"""Offline evaluation of scorers on per-user preference pairs (METHOD.md §4)."""

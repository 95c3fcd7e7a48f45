"""Preference intake: pairwise feedback from apps and bulk imports of preference files."""

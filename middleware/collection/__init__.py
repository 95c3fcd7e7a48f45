"""Four-candidate preference collection: pending comparisons, judgements, best-only sessions."""

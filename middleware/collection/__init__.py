"""Four-candidate preference collection: variants, pending comparisons, judgements, sessions."""

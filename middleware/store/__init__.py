"""Redis repositories. Nothing here imports the API layer."""

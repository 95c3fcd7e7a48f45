"""HTTP routers, one per concern. Nothing below the API layer imports from here."""

"""Quotas: per-tenant limits on consumption (requests, concurrency, tokens) and caps on request size.

`policy` holds the settings model (`PERSONA_LIMITS`), `usage` counts tokens from an upstream's
`usage`, `service` admits requests against Redis (middleware/store/ratelimits.py).
"""

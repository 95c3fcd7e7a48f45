"""Rerankers: score N candidate answers for one user; the proxy returns the best.

A reranker is any object with `async score(context, candidates, *, user) -> list[float]`, made by a
factory that a plugin registers under a name through the entry-point group `middleware.rerankers`
(see `registry.py`). The built-ins `judge` and `lora` register through the same path.
"""

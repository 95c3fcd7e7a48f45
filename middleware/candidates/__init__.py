"""Candidate answers: the variants a conversation is sent in, and their concurrent generation.

One generator serves every flow that asks the upstream for several answers to one conversation:
comparisons (collection), rerank mode and the online evaluation's trials.
"""

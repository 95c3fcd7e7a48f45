"""Lua scripts shared by several stores."""

from __future__ import annotations

# KEYS[1] key, ARGV[1] value: delete the key only while it still holds the value (a lock or a claim
# released by its owner alone; a newer owner's value is left alone). Returns 1 if deleted.
DELETE_IF_EQUAL = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

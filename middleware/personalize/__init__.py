"""Turn a stored persona into the block placed ahead of a conversation."""

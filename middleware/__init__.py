"""persona-middleware: prompt-level personalization for any OpenAI-compatible LLM app."""

__version__ = "0.1.0"

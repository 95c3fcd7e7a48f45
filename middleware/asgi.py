"""ASGI entry point for servers: `uvicorn middleware.asgi:app` (settings from the environment)."""

from middleware.app import create_app
from middleware.config import Settings

app = create_app(Settings())

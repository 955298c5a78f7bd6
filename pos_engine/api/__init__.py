"""HTTP: the app factory, the terminal API, error mapping, OpenAPI."""

from pos_engine.api.app import create_app

__all__ = ["create_app"]

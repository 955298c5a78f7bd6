"""The one module-level app, for `gunicorn pos_engine.wsgi:app`."""

from pos_engine.api import create_app

app = create_app()

"""Persistence: SQLAlchemy models and repositories, migrations, counter stores."""

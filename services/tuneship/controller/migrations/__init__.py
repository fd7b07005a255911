"""The state database's Alembic migrations (``versions/``), applied by
``tuneship.controller.schema.migrate`` when a controller starts."""

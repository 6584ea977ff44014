"""Alembic environment: runs on the connection `metering.db.migrate` hands over (one transaction)."""

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `python -m metering migrate`")

context.configure(connection=connection, transactional_ddl=True)
context.run_migrations()

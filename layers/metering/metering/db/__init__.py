"""PostgreSQL access: the engine, transactions and migrations."""

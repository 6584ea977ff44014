"""`sqlalchemy.exc`, imported on first use: `from metering.db import exc`, then `exc.DBAPIError`.

Importing anything of SQLAlchemy imports all of its Core (≈ 40 % of a handler's import time), and
a handler needs it only once it talks to the database: `metering.db.engine.get_engine` imports it
then. The modules that name SQLAlchemy's exceptions at module level (in `except` clauses, which
are evaluated only when an exception is raised) name them through this module, so importing them
imports no SQLAlchemy. The first attribute read imports `sqlalchemy.exc` and caches the value
here; type checkers see the real classes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError

    __all__ = ["DBAPIError", "DisconnectionError", "InterfaceError"]
else:

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):  # e.g. __path__, __wrapped__: not SQLAlchemy's to answer
            raise AttributeError(name)
        from sqlalchemy import exc

        value = getattr(exc, name)
        globals()[name] = value
        return value

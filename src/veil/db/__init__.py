"""Persistence: SQLAlchemy models, engine/session setup, Alembic migrations (packaged, run at start-up)."""

from .models import ApiKey, Base, CallbackRegistration, CreditEntry, Job, Task
from .session import make_engine, make_sessionmaker, open_database, upgrade

__all__ = [
    "ApiKey",
    "Base",
    "CallbackRegistration",
    "CreditEntry",
    "Job",
    "Task",
    "make_engine",
    "make_sessionmaker",
    "open_database",
    "upgrade",
]

"""reconciler: keeps PostgreSQL-backed job queues healthy."""

__all__ = ["__version__"]

__version__ = "0.1.0"

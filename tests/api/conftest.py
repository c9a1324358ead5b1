"""Fixtures of the API tests: the PostgreSQL ones (one schema per test)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the pgserver helper
from pgserver import pg_database, pg_location, pg_url

__all__ = ["pg_database", "pg_location", "pg_url"]

"""Fixtures live in plugins (psycopg's tests/fix_*.py layout)."""

pytest_plugins = ["tests.fix_pg", "tests.fix_ring", "tests.fix_service"]

"""Defaults of the service, in a module light enough for the CLI to import when it builds its parser."""

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_DB_FILE = "inspections.sqlite3"

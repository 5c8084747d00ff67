"""Stores: where the plugin keeps what it must not lose (SQLite and PostgreSQL databases, files).

Each table has one owner module here; nothing else writes SQL against it. Database errors become
``StoreUnavailableError`` at this boundary. The pure core never imports this package.
"""

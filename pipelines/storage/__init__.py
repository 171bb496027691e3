"""ClickHouse storage: embedded chdb HTTP server, schema migrations, writers."""

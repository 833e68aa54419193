"""What a user reads after a search: reports, tables and figures."""

"""Django's PostgreSQL backend, with a pool that survives a database restart (see `base`)."""

"""Long-running checks that are not part of `make test` (pytest collects nothing here): `make soak`."""

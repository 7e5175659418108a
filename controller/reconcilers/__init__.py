"""Plain reconcilers, one file per kind."""

"""A workload that reports and exits 0."""

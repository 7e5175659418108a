"""Workloads for `dyff up` under attack (tests/attack/fake_up.py): long-running, and
shaped like the evaluate workload's process tree."""

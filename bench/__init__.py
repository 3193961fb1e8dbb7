"""./scripts/bench: what the system costs, measured against references in the same run."""

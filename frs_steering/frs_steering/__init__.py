"""frs_steering."""

"""frs_bringup."""

"""frs_vlm_bridge."""

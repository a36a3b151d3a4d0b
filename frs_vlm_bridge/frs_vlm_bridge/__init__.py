"""frs_vlm_bridge: coarse-direction reasoners (VLM, human) and their shared types."""

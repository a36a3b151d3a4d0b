# Source this file for interactive use of the FRS-ROS venv: `source scripts/env.sh`.
# It activates .venv (made by `make setup`) and sets the ROS 2 variables the wheels need.
_frs_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
_frs_venv="${FRS_VENV:-$_frs_root/.venv}"
if [ ! -f "$_frs_venv/.frs-ready" ]; then
  echo "FRS-ROS: $_frs_venv is not set up (or its last set-up failed); run 'make setup' first." >&2
else
  # shellcheck disable=SC1091
  . "$_frs_venv/bin/activate"
  export AMENT_PREFIX_PATH="$_frs_venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
  export CMAKE_PREFIX_PATH="$_frs_venv${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  export LD_LIBRARY_PATH="$_frs_venv/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export ROS_DISTRO=jazzy
  export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
  export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
fi
unset _frs_root _frs_venv

#!/usr/bin/env bash
# Idempotent set-up of the local venv (.venv): pinned Python deps and ROS 2 Jazzy wheels,
# the frs_msgs interface package built against them, and the three ament_python packages.
#
# The venv root is the ROS install prefix (AMENT_PREFIX_PATH). A marker file is written
# only after every step and an import check pass, so a half-built venv is never "ready".
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FRS_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3.11}"
READY="$VENV/.frs-ready"
BUILD="${FRS_BUILD:-$ROOT/build}"
START=$SECONDS

say() { echo "[setup] $*"; }
die() {
  echo "[setup] ERROR: $*" >&2
  echo "[setup] The venv at $VENV is NOT ready; fix the cause and run the command again." >&2
  exit 1
}
hash_of() { cat "$@" | sha256sum | cut -c1-16; }
# pip install into the venv, its output kept in build/pip-<name>.log and shown on failure.
pip_logged() {
  local name="$1"
  shift
  mkdir -p "$BUILD"
  "$PY" -m pip install -q --disable-pip-version-check "$@" >"$BUILD/pip-$name.log" 2>&1 || {
    grep -v "^WARNING: Location" "$BUILD/pip-$name.log" | tail -n 30 >&2
    return 1
  }
}

rm -f "$READY"

# 1. The interpreter and venv.
if [ ! -x "$VENV/bin/python" ]; then
  command -v "$PYTHON" >/dev/null || die "$PYTHON not found (set PYTHON=/path/to/python3.11)."
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' ||
    die "$PYTHON is not Python 3.11: the ros-jazzy-* wheels used here are built for cp311."
  say "creating venv at $VENV"
  "$PYTHON" -m venv "$VENV" || die "could not create a venv (on Debian: apt install python3.11-venv)."
fi
PY="$VENV/bin/python"
"$PY" -c 'import sysconfig, os, sys
inc = sysconfig.get_paths()["include"]
sys.exit(not os.path.exists(os.path.join(inc, "Python.h")))' ||
  die "Python.h missing: building frs_msgs needs the Python headers (apt install python3.11-dev)."

# 2. Pinned dependencies (skipped when requirements.txt is unchanged).
DEPS_STAMP="$VENV/.frs-deps-$(hash_of "$ROOT/scripts/requirements.txt")"
if [ ! -f "$DEPS_STAMP" ] || ! "$PY" -c 'import numpy, torch, catkin_pkg' 2>/dev/null; then
  say "installing pinned dependencies (torch CPU, ROS 2 Jazzy wheels, MuJoCo, ...)"
  pip_logged deps -r "$ROOT/scripts/requirements.txt" ||
    die "pip install -r scripts/requirements.txt failed (see above)."
  "$PY" -c 'import torch; assert torch.__version__.startswith("2.13.0"), torch.__version__' ||
    die "torch is not 2.13.0 (CPU): refusing a venv that would pull a CUDA build."
  rm -f "$VENV"/.frs-deps-*
  touch "$DEPS_STAMP"
fi

# 3. Point the wheels' exported CMake files at this venv's Python and numpy headers
#    (they carry the wheel build machine's /opt/python/cp3XX-cp3XX/... paths).
PY_INC="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
NP_INC="$("$PY" -c 'import numpy; print(numpy.get_include())')"
mapfile -t stale < <(grep -rlE '/opt/python/cp3[0-9]+-cp3[0-9]+' "$VENV/share" --include='*.cmake' || true)
if [ "${#stale[@]}" -gt 0 ]; then
  say "rewriting build-machine include paths in ${#stale[@]} CMake files"
  sed -i -E \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#$PY_INC#g" \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/_core/include#$NP_INC#g" \
    "${stale[@]}"
  if grep -rqE '/opt/python/cp3' "${stale[@]}"; then
    die "unrecognised /opt/python paths remain in: $(grep -rlE '/opt/python/cp3' "${stale[@]}")"
  fi
fi

# 4. frs_msgs (rebuilt only when its sources change).
export AMENT_PREFIX_PATH="$VENV"
export CMAKE_PREFIX_PATH="$VENV"
export PATH="$VENV/bin:$PATH"
MSGS_STAMP="$VENV/.frs-msgs-$(hash_of "$ROOT"/frs_msgs/CMakeLists.txt "$ROOT"/frs_msgs/package.xml \
  "$ROOT"/frs_msgs/msg/*.msg "$ROOT"/frs_msgs/srv/*.srv "$ROOT"/frs_msgs/action/*.action)"
if [ ! -f "$MSGS_STAMP" ]; then
  say "building frs_msgs into $VENV"
  mkdir -p "$BUILD"
  log="$BUILD/frs_msgs.log"
  {
    cmake -S "$ROOT/frs_msgs" -B "$BUILD/frs_msgs" -DCMAKE_INSTALL_PREFIX="$VENV" \
      -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release &&
      cmake --build "$BUILD/frs_msgs" -j "$(nproc)" &&
      cmake --install "$BUILD/frs_msgs"
  } >"$log" 2>&1 || {
    tail -n 30 "$log" >&2
    die "building frs_msgs failed; full log: $log"
  }
  rm -f "$VENV"/.frs-msgs-*
  touch "$MSGS_STAMP"
fi

# 5. The ament_python packages (a real install, so share/<pkg> data files land in the prefix).
say "installing frs_control, frs_steering, frs_vlm_bridge, frs_sim, frs_bringup"
pip_logged packages --no-deps --no-build-isolation \
  "$ROOT/frs_control" "$ROOT/frs_steering" "$ROOT/frs_vlm_bridge" "$ROOT/frs_sim" \
  "$ROOT/frs_bringup" ||
  die "installing the ament_python packages failed (see above)."
# setuptools builds in-tree: drop its build/ and egg-info copies so nothing stale shadows sources.
rm -rf "$ROOT"/frs_{control,steering,vlm_bridge,sim,bringup}/{build,*.egg-info}

# 5b. System tools of the split-rig network tests (frs_bringup/test/test_network.py): iproute2
#     (ip, tc) and nftables (nft drops a share of packets). Installed as root with apt-get; a
#     machine without them gets a warning here and a clear failure from that test.
if ! command -v nft >/dev/null || ! command -v tc >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing iproute2 and nftables (network tests)"
    mkdir -p "$BUILD"
    {
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q iproute2 nftables ||
        { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q iproute2 nftables; }
    } >"$BUILD/apt-network.log" 2>&1 ||
      say "WARNING: apt-get install iproute2 nftables failed (see $BUILD/apt-network.log)"
  else
    say "WARNING: nft / tc missing and not root: install iproute2 and nftables for test_network.py"
  fi
fi

# 6. Check the result imports before calling it ready.
"$PY" - <<'EOF' || die "the venv does not import cleanly (see above)."
import rclpy  # noqa: F401
import torch
from frs_msgs.action import ExecuteChunk, SteerChunk  # noqa: F401
from frs_msgs.msg import ActionChunk  # noqa: F401
import frs_control, frs_steering, frs_vlm_bridge, frs_sim, frs_bringup  # noqa: F401,E401
import mujoco  # noqa: F401
assert torch.__version__.startswith("2.13.0")
EOF
touch "$READY"
say "venv ready at $VENV ($((SECONDS - START)) s)"

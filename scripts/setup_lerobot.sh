#!/usr/bin/env bash
# Opt-in, idempotent set-up of the LeRobot side environment (.venv-lerobot) in which the
# LeRobot pi0 / pi05 adapter is tested against LeRobot's own model code.
#
# Deviations from LeRobot 0.6.1's declared pins (docs/lerobot.md explains each):
#  * Python 3.11 (LeRobot declares >= 3.12): installed --ignore-requires-python; the few LeRobot
#    modules that use Python 3.12 type-parameter syntax are rewritten at import by
#    frs_steering.policies.lerobot_compat.
#  * torch 2.13.0 CPU from the main venv (LeRobot declares torch < 2.12), seen through a .pth
#    file, so no CUDA wheels are downloaded.
#  * torchvision is not installed (PyPI's build links CUDA torch); lerobot_compat stubs it.
#  * LeRobot and its pure-Python deps are installed --no-deps at the versions pinned in
#    scripts/requirements-lerobot.txt.
# Writes a marker only after an import check passes, so a half-built env is never "ready".
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MAIN_VENV="${FRS_VENV:-$ROOT/.venv}"
SIDE="${FRS_LEROBOT_VENV:-$ROOT/.venv-lerobot}"
REQS="$ROOT/scripts/requirements-lerobot.txt"
LEROBOT_VERSION="0.6.1"
BUILD="${FRS_BUILD:-$ROOT/build}"
START=$SECONDS

say() { echo "[setup_lerobot] $*"; }
die() {
  echo "[setup_lerobot] ERROR: $*" >&2
  echo "[setup_lerobot] $SIDE is NOT ready; fix the cause and run the command again." >&2
  exit 1
}

MAIN_PY="$MAIN_VENV/bin/python"
[ -x "$MAIN_PY" ] || die "main venv $MAIN_VENV missing: run scripts/setup.sh (make setup) first."
"$MAIN_PY" -c 'import torch' 2>/dev/null || die "the main venv at $MAIN_VENV has no torch."

STAMP_KEY="$( (cat "$REQS" "$0"; echo "$LEROBOT_VERSION $MAIN_VENV") | sha256sum | cut -c1-16)"
READY="$SIDE/.frs-lerobot-$STAMP_KEY"
if [ -f "$READY" ]; then
  say "ready at $SIDE (nothing to do)"
  exit 0
fi
rm -f "$SIDE"/.frs-lerobot-*

# 1. A venv of the main venv's own interpreter (the same Python, so its compiled wheels load).
BASE_PY="$("$MAIN_PY" -c 'import sys; print(sys._base_executable)')"
if [ ! -x "$SIDE/bin/python" ]; then
  say "creating $SIDE with $BASE_PY"
  "$BASE_PY" -m venv "$SIDE" || die "could not create a venv with $BASE_PY"
fi
PY="$SIDE/bin/python"

# 2. The main venv's packages (torch, numpy, rclpy, frs_msgs, ...) visible *after* the side
#    env's own: a .pth file appends its site-packages to sys.path. The ROS wheels find their
#    shared libraries through LD_LIBRARY_PATH, which their bootstrapper derives from sys.prefix
#    (the side env's here), so bin/frs-python sets it for the main venv and runs python.
MAIN_SITE="$("$MAIN_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
SIDE_SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$MAIN_SITE" >"$SIDE_SITE/frs_main_venv.pth"
MAIN_PREFIX="$(cd "$MAIN_VENV" && pwd)"
cat >"$SIDE/bin/frs-python" <<WRAP
#!/usr/bin/env bash
# Python of the LeRobot side env with the main venv's ROS 2 libraries (written by setup_lerobot.sh).
libs="$MAIN_PREFIX/lib"
for dir in "$MAIN_SITE"/ros_*.libs; do libs="\$libs:\$dir"; done
export LD_LIBRARY_PATH="\$libs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export AMENT_PREFIX_PATH="$MAIN_PREFIX\${AMENT_PREFIX_PATH:+:\$AMENT_PREFIX_PATH}"
export _ROS_WHEELS_BOOTSTRAP_COMPLETE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "$SIDE/bin/python" "\$@"
WRAP
chmod +x "$SIDE/bin/frs-python"

# 3. LeRobot's pure-Python deps and LeRobot itself, no dependency resolution.
mkdir -p "$BUILD"
log="$BUILD/pip-lerobot.log"
say "installing scripts/requirements-lerobot.txt and lerobot==$LEROBOT_VERSION (--no-deps)"
{
  "$PY" -m pip install -q --disable-pip-version-check --no-deps -r "$REQS" &&
    "$PY" -m pip install -q --disable-pip-version-check --no-deps --ignore-requires-python \
      "lerobot==$LEROBOT_VERSION"
} >"$log" 2>&1 || {
  tail -n 30 "$log" >&2
  die "pip install failed; full log: $log"
}

# 4. Import check through the project's compat shim.
PYTHONPATH="$ROOT/frs_steering:$ROOT/frs_control${PYTHONPATH:+:$PYTHONPATH}" \
  "$SIDE/bin/frs-python" - <<'PYEOF' ||
from frs_steering.policies.lerobot_compat import import_lerobot

modules = import_lerobot()
import rclpy  # noqa: F401  (the main venv's ROS wheels load here too)
import torch
assert torch.__version__.startswith("2.13.0"), torch.__version__
print("lerobot", modules.version, "torch", torch.__version__)
PYEOF
  die "LeRobot does not import in $SIDE (see above)."
touch "$READY"
say "ready at $SIDE ($((SECONDS - START)) s)"

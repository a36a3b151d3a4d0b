#!/usr/bin/env bash
# Run a command alone on the network: in its own network namespace (loopback only) with its own
# /dev/shm, so the ROS 2 nodes it starts can neither see nor be seen by any other DDS participant on
# this host. Why: two test sessions on one host (or CI jobs sharing a host network) that draw the
# same random ROS_DOMAIN_ID exchange goals and instructions, and Fast DDS shared-memory ports are
# named by domain and participant, so a private network alone is not enough.
#
# As root: `unshare -nm`; otherwise an unprivileged user namespace (`unshare -Urnm`). Where neither
# is permitted the command runs as is, with a warning (the random domain is then the only guard).
# Usage: scripts/isolated.sh CMD [ARGS...]
set -euo pipefail

if [[ "${FRS_ISOLATED:-}" == 1 ]]; then
  exec "$@"
fi

# Inside the namespaces: loopback up, a private tmpfs on /dev/shm, then the command.
inner='set -e
if command -v ip >/dev/null; then
  ip link set lo up
else
  python3 -c "
import fcntl, socket, struct
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flags = struct.unpack(\"16sH\", fcntl.ioctl(sock, 0x8913, struct.pack(\"16sH\", b\"lo\", 0)))[1]
fcntl.ioctl(sock, 0x8914, struct.pack(\"16sH\", b\"lo\", flags | 1))"
fi
mount -t tmpfs -o mode=1777 frs-shm /dev/shm
export FRS_ISOLATED=1
exec "$@"'

if [[ "$(id -u)" == 0 ]]; then
  options=(-nm)
else
  options=(-Urnm)
fi
if unshare "${options[@]}" true 2>/dev/null; then
  exec unshare "${options[@]}" bash -c "$inner" isolated "$@"
fi
echo "scripts/isolated.sh: unshare ${options[*]} is not permitted here; running without" \
  "network isolation (concurrent sessions on this host could share a ROS domain)" >&2
exec "$@"

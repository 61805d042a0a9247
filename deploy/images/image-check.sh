#!/usr/bin/env bash
# make image-check: build the CPU job image on a Debian bookworm base made here (no
# registry can be pulled from), then run `medimg demo` inside it as its non-root user
# with a read-only root filesystem. Slow (a debootstrap, a TensorFlow install, a demo):
# not part of make test.
#
# Needs root (debootstrap, and dockerd if it is not running) or a working podman, and the
# Debian and PyPI mirrors. ENGINE=docker|podman picks the engine; MIRROR the Debian mirror.
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK="${IMAGE_CHECK_DIR:-/tmp/medimg-image-check}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
BASE_TAG=medimg-base:bookworm
IMAGE_TAG=medimg/stream-cpu:check
mkdir -p "$WORK"

engine="${ENGINE:-}"
if [[ -z "$engine" ]]; then
  if command -v docker >/dev/null; then engine=docker
  elif command -v podman >/dev/null; then engine=podman
  else echo "image-check: install docker.io or podman (Debian packages)" >&2; exit 2; fi
fi
if [[ "$engine" == docker ]] && ! docker info >/dev/null 2>&1; then
  command -v dockerd >/dev/null || { echo "image-check: dockerd missing (docker.io)" >&2; exit 2; }
  echo "image-check: starting dockerd (log: $WORK/dockerd.log)"
  dockerd >"$WORK/dockerd.log" 2>&1 &
  dockerd_pid=$!
  # Stop the daemon this script started, and only that one, however the check ends.
  trap 'kill "$dockerd_pid" 2>/dev/null; wait "$dockerd_pid" 2>/dev/null || true' EXIT
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null
fi

if ! "$engine" image inspect "$BASE_TAG" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || { echo "image-check: install debootstrap" >&2; exit 2; }
  rootfs="$WORK/rootfs"
  rm -rf "$rootfs"
  echo "image-check: debootstrap bookworm -> $BASE_TAG"
  # python3 is 3.11 on bookworm, the version constraints.txt was resolved for.
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  # The base is for this check only: trust the CAs this machine trusts (a TLS-inspecting
  # proxy in front of PyPI), for pip too, which otherwise uses its own bundle.
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$rootfs/etc/pip.conf"
  tar -C "$rootfs" -c . | "$engine" import - "$BASE_TAG"
fi

echo "image-check: building $IMAGE_TAG (log: $WORK/build.log)"
start=$(date +%s)
"$engine" build --network host -f deploy/images/stream-cpu.Dockerfile \
  --build-arg BASE="$BASE_TAG" --build-arg EXTRAS=tensorflow,training,local \
  -t "$IMAGE_TAG" . >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; exit 1; }
echo "image-check: built in $(( $(date +%s) - start )) s"
"$engine" image inspect "$IMAGE_TAG" --format 'image-check: user={{.Config.User}} size={{.Size}} bytes'

echo "image-check: medimg demo inside the image (no network, read-only root)"
"$engine" run --rm --network none --read-only --tmpfs /tmp:exec,size=4g \
  --cap-drop ALL --security-opt no-new-privileges \
  "$IMAGE_TAG" demo --workdir /tmp/demo --studies 12 2>&1 | tee "$WORK/demo.log"
echo "image-check: passed (logs in $WORK)"

#!/bin/sh
# Run banger's tests as CI does: install what the tests use, check
# formatting and vet, then run every test (end-to-end tests build and run
# the real binary). Run from anywhere, as root (tests run a daemon as
# another user and a root helper).
set -eu
cd "$(dirname "$0")/.."

. packaging/packages.sh
# sudo: the daemon's sudo path to the helper is tested for real.
# containerd: the peer anchor of the process benchmarks (BENCHMARKS.md).
# git: vm run copies work trees. iproute2: network tests run in
# namespaces of their own (ip netns). systemd: systemd-analyze verify of
# the units (nothing is started). dpkg-deb, visudo: in dpkg and sudo.
# The rest boot real guests: QEMU, qcow2 overlays, the host kernel (and its
# modules), busybox for the tiny image, mmdebstrap (and uidmap) for the
# Debian default image, ext4 tools to build images.
# skopeo: the OCI import tests read a docker archive and a layout it
# writes, as users' tools write them.
ensure_packages sudo git iproute2 systemd containerd qemu-system-x86 qemu-utils linux-image-amd64 busybox-static e2fsprogs mmdebstrap uidmap skopeo

PATH="$PATH:/usr/local/go/bin"
# The host the tests assume, on any machine of this kind: files others
# may read (tests run binaries as another user), messages in English
# (sudo's are checked), and git without the user's own configuration.
umask 022
export LC_ALL=C.UTF-8
export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1
unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then
	echo "gofmt needed on:" $unformatted >&2
	exit 1
fi
go vet -tags urfave_cli_no_docs ./...
go test -tags urfave_cli_no_docs -count=1 -timeout 15m ./...

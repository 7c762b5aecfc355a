#!/bin/sh
# Set up banger on a fresh Debian 12 machine: install what it needs, build
# the one static binary into ./bin, and make the applet links beside it.
# Run from the repository root, as root or as a user with sudo.
set -eu
cd "$(dirname "$0")/.."

. packaging/packages.sh
# sudo: how the daemon reaches the root helper when no helper service runs.
# git: `vm run PATH` copies a work tree's tracked files (git ls-files).
# qemu-system-x86, qemu-utils: the VM engine and its disk overlays.
# linux-image-amd64, e2fsprogs: the kernel images boot, ext4 tools to
# build their root filesystems. mmdebstrap: builds the default image, a
# Debian root, from Debian's packages without root (uidmap: its
# unprivileged mode maps the root's owners to the user's subordinate ids).
# busybox-static: the tiny image, made locally with no download.
ensure_packages sudo git qemu-system-x86 qemu-utils linux-image-amd64 e2fsprogs mmdebstrap uidmap busybox-static
ensure_subids

# Go: the machine's own toolchain (/usr/local/go), modules from the proxy.
PATH="$PATH:/usr/local/go/bin"
version=$(git describe --always --dirty 2>/dev/null || echo dev)
mkdir -p bin
CGO_ENABLED=0 go build -trimpath -tags urfave_cli_no_docs -ldflags "-X main.version=$version" -o bin/banger .
bin/banger links install bin
bin/banger links check bin >/dev/null
echo "built bin/banger ($version); applet links in bin/" >&2

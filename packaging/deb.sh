#!/bin/sh
# Build banger's .deb into DIR (default dist/): the static binary as
# /usr/bin/banger with its applet links, the units (bangerd-root.service,
# and bangerd@.service for an owner given as the instance), and the
# sudoers rule as an example under /usr/share/doc/banger. nfpm is a Go
# tool pinned in go.mod. Run from anywhere; needs Go, not root.
set -eu
cd "$(dirname "$0")/.."
out=$(mkdir -p "${1:-dist}" && cd "${1:-dist}" && pwd)

PATH="$PATH:/usr/local/go/bin"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
version=$(git describe --always --dirty 2>/dev/null || echo dev)
CGO_ENABLED=0 go build -trimpath -tags urfave_cli_no_docs -ldflags "-X main.version=$version" -o "$stage/banger" .
"$stage/banger" system render --prefix /usr --owner %i --helper service "$stage/units"
mv "$stage/units/bangerd.service" "$stage/units/bangerd@.service"
"$stage/banger" system render --prefix /usr --owner youruser --helper sudo "$stage/sudo"
sed -i '1i # An example: replace youruser with the owner, then install it as\n# /etc/sudoers.d/banger, mode 0440, checked with `visudo -cf`\n# (`banger system install --helper sudo` does all that).' "$stage/sudo/banger"

# A Debian version must start with a digit: 0.0.0+g<commit> until banger
# has releases.
BANGER_DEB_VERSION=${BANGER_DEB_VERSION:-0.0.0+g$(echo "$version" | tr -c 'A-Za-z0-9.\n' '.')}
export BANGER_DEB_VERSION
cp packaging/nfpm.yaml packaging/deb-postinst.sh "$stage/"
nfpm=$(go tool -n nfpm) # built (or found in Go's cache), not run
(cd "$stage" && "$nfpm" package --config nfpm.yaml --packager deb --target "$out/") >&2
ls "$out"/banger_*.deb

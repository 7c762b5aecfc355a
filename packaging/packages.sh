# Sourced by setup.sh and test.sh: ensure_packages installs the Debian
# packages it is given that are not installed yet (apt-get update first,
# only when something is missing).
ensure_packages() {
	missing=
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
	done
	[ -n "$missing" ] || return 0
	sudo_=
	[ "$(id -u)" -eq 0 ] || sudo_=sudo
	$sudo_ env DEBIAN_FRONTEND=noninteractive apt-get update -qq
	$sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
}

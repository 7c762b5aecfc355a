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

# ensure_subids gives the user running this subordinate uids and gids
# (/etc/subuid, /etc/subgid) when it has none and is not root: mmdebstrap
# builds the default image in a user namespace that maps them, so the
# Debian root's files get their owners without root.
ensure_subids() {
	[ "$(id -u)" -ne 0 ] || return 0
	user=$(id -un)
	grep -q "^$user:" /etc/subuid 2>/dev/null && grep -q "^$user:" /etc/subgid 2>/dev/null && return 0
	# The next free range of 65536 after every user's (as useradd picks).
	start=$(cat /etc/subuid /etc/subgid 2>/dev/null | awk -F: 'BEGIN { n = 100000 } $2 + $3 > n { n = $2 + $3 } END { print n }')
	range="$start-$((start + 65535))"
	sudo usermod --add-subuids "$range" --add-subgids "$range" "$user"
}

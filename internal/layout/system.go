package layout

// The system install's paths, from the root of the file system
// (packaging writes them, the client and the helper read them).
const (
	SystemConfigDir    = "/etc/banger"
	SystemConfig       = SystemConfigDir + "/install.toml" // the owner, its uid, the prefix, the helper mode
	SystemUnitDir      = "/etc/systemd/system"
	HelperUnit         = "bangerd-root.service"
	DaemonUnit         = "bangerd.service"
	SystemSudoers      = "/etc/sudoers.d/banger"
	SystemStateDir     = "/var/lib/banger"                    // the daemon's, owned by the owner (StateDirectory=)
	SystemDaemonSocket = "/run/banger/" + DaemonSocket        // the daemon's (RuntimeDirectory=)
	SystemHelperSocket = "/run/banger-root/bangerd-root.sock" // the helper's, in a root-owned 0711 directory
)

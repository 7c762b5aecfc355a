package boot

// Paths inside the initramfs.
const (
	// Init is the agent binary, at the same path as on the root disk. The
	// kernel must be told to run it (rdinit=, see InitrdArgs): started as
	// /init, the binary would not know it is the agent, since the name it
	// is started under picks the applet.
	Init = AgentPath
	// ManifestPath holds the Manifest as JSON. Its presence is how the
	// agent knows it runs from the initramfs and not from the root disk.
	ManifestPath = "/banger/initramfs.json"
	// ModulesDir holds the kernel modules, uncompressed, one file each.
	ModulesDir = "/banger/modules"
)

// InitrdArgs are the kernel parameters that boot an initramfs of this
// layout.
func InitrdArgs() []string { return []string{ParamRDInit + "=" + Init} }

// Manifest says what the initramfs's /init must do before it can mount the
// root disk.
type Manifest struct {
	// Release is the kernel release the modules were built for.
	Release string `json:"release,omitempty"`
	// Modules are loaded in this order; each one's dependencies come before it.
	Modules []Module `json:"modules"`
}

// Module is one kernel module file of the initramfs.
type Module struct {
	Name string `json:"name"`
	// File is the module's path inside the initramfs.
	File string `json:"file"`
	// Optional modules may fail to load (a crc32c driver for a CPU
	// feature the guest lacks); the guest boots without them.
	Optional bool `json:"optional,omitempty"`
}

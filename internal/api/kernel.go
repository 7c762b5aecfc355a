package api

import "time"

// Kernel methods.
const (
	MethodKernelBuildBegin = "kernel.build.begin"
	MethodKernelList       = "kernel.list"
	MethodKernelShow       = "kernel.show"
	MethodKernelDelete     = "kernel.delete"
)

// KindKernelBuild is the operation kind of kernel.build.begin.
const KindKernelBuild = "kernel.build"

// DefaultKernel is the kernel kernel.build.begin builds without a name,
// and the one the default image boots once it exists.
const DefaultKernel = "default"

// KernelBuild is the params of kernel.build.begin.
type KernelBuild struct {
	Name string `json:"name,omitempty"` // DefaultKernel when empty
	Jobs int    `json:"jobs,omitempty"` // make -j; the host's CPUs when 0
}

// Kernel is a built kernel as the daemon reports it (also the result of
// a kernel.build operation).
type Kernel struct {
	Name         string    `json:"name"`
	Release      string    `json:"release"`
	Source       string    `json:"source"`
	Created      time.Time `json:"created"`
	SHA256       string    `json:"sha256"`
	SizeBytes    int64     `json:"size_bytes"`
	Objects      int       `json:"objects"`
	BuildSeconds float64   `json:"build_seconds"`
	Vmlinux      string    `json:"vmlinux"`
	Config       string    `json:"config"`
	// UsedBy names the images that boot this kernel.
	UsedBy []string `json:"used_by,omitempty"`
}

package api

import "time"

// Warm snapshots: image.warm.begin saves one for an image (an operation
// of kind KindImageWarm whose result is the WarmSnapshot); vm create and
// vm run restore it instead of booting unless told --cold.
const (
	MethodImageWarmBegin = "image.warm.begin"
	KindImageWarm        = "image.warm"
)

// ImageWarm is the params of image.warm.begin: the image and the VM
// shape the snapshot is for (VMs of another shape boot).
type ImageWarm struct {
	Name      string `json:"name"`
	CPUs      int    `json:"cpus,omitempty"`       // DefaultCPUs when 0
	MemoryMiB int    `json:"memory_mib,omitempty"` // DefaultMemoryMiB when 0
	DiskMiB   int    `json:"disk_mib,omitempty"`   // 0: the image's size
}

// WarmSnapshot is an image's warm snapshot: the state of a guest that
// booted to agent-ready, and what it was taken with.
type WarmSnapshot struct {
	Image       string    `json:"image"`
	Created     time.Time `json:"created"`
	CPUs        int       `json:"cpus"`
	MemoryMiB   int       `json:"memory_mib"`
	DiskMiB     int       `json:"disk_mib,omitempty"`
	MemoryBytes int64     `json:"memory_bytes"`
	DiskBytes   int64     `json:"disk_bytes"`
}

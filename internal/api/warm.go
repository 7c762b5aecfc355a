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

// StandbyStatus is what an image's standbys are (image show, the
// doctor): VMs restored from its warm snapshot ahead of time and paused,
// for the next creates to take.
type StandbyStatus struct {
	Want    int   `json:"want"`  // the daemon's --standbys
	Ready   int   `json:"ready"` // waiting to be taken
	Filling bool  `json:"filling,omitempty"`
	PIDs    []int `json:"pids,omitempty"`
	// Skipped says why the daemon made no standby the last time it
	// tried (the host's memory), and when; empty once one was made.
	Skipped   string    `json:"skipped,omitempty"`
	SkippedAt time.Time `json:"skipped_at,omitzero"`
}

package api

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

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
	// tried (the host's memory, or the last attempt's error), and when;
	// empty once one was made.
	Skipped   string    `json:"skipped,omitempty"`
	SkippedAt time.Time `json:"skipped_at,omitzero"`
}

// Summary is one line about the standbys (image show, the doctor), ""
// when there is nothing to say.
func (st StandbyStatus) Summary() string {
	var out string
	switch {
	case st.Ready > 0:
		pids := make([]string, len(st.PIDs))
		for i, p := range st.PIDs {
			pids[i] = strconv.Itoa(p)
		}
		out = fmt.Sprintf("%d of %d ready (qemu pid %s)", st.Ready, st.Want, strings.Join(pids, ", "))
	case st.Filling:
		out = "on its way"
	case st.Skipped == "":
		return ""
	default:
		out = "none"
	}
	if st.Skipped != "" {
		out += fmt.Sprintf("; skipped %s: %s", st.SkippedAt.Local().Format(time.DateTime), st.Skipped)
	}
	return out
}

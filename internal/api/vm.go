package api

import (
	"fmt"
	"time"

	"banger/internal/privapi"
	"banger/rpc"
)

// VM and image methods.
const (
	MethodVMCreateBegin  = "vm.create.begin"
	MethodVMStartBegin   = "vm.start.begin"
	MethodVMRestartBegin = "vm.restart.begin"
	MethodVMStop         = "vm.stop"
	MethodVMKill         = "vm.kill"
	MethodVMDelete       = "vm.delete"
	MethodVMPrune        = "vm.prune"
	MethodVMList         = "vm.list"
	MethodVMShow         = "vm.show"
	MethodVMLogs         = "vm.logs"

	MethodNetworkReset = "network.reset"

	MethodImageImport = "image.import"
	// MethodImageImportBegin is image.import as an operation, its stage
	// detail the bytes of an OCI image's layers read.
	MethodImageImportBegin = "image.import.begin"
	MethodImageList        = "image.list"
	MethodImageShow        = "image.show"
	MethodImageDelete      = "image.delete"
)

// Operation kinds.
const (
	KindVMCreate    = "vm.create"
	KindVMStart     = "vm.start"
	KindVMRestart   = "vm.restart"
	KindImageImport = "image.import"
)

// Defaults of vm create.
const (
	// DefaultImage is Debian stable with a toolchain, built on first use
	// from Debian's packages; TinyImage is busybox, assembled from the
	// host's files with no download.
	DefaultImage     = "default"
	TinyImage        = "tiny"
	DefaultCPUs      = 1
	DefaultMemoryMiB = 256
)

// A VM's network (VMCreate.Network, VM.Network).
const (
	// NetworkUser is QEMU's user-mode network: no root needed, the guest
	// behind a NAT, reached through published ports. The default.
	NetworkUser = "user"
	// NetworkBridge puts the guest on banger's bridge through a tap the
	// root helper makes: an address of its own, reachable from the host
	// and from other bridged VMs, outbound traffic through NAT.
	NetworkBridge = "bridge"
)

// Bounds of vm create, checked by the daemon.
const (
	MaxCPUs      = 64
	MinMemoryMiB = 64
	MaxMemoryMiB = 64 << 10
	MaxDiskMiB   = 1 << 20
)

// VMCreate is the params of vm.create.begin.
type VMCreate struct {
	Name      string `json:"name,omitempty"`  // generated when empty
	Image     string `json:"image,omitempty"` // DefaultImage when empty
	CPUs      int    `json:"cpus,omitempty"`
	MemoryMiB int    `json:"memory_mib,omitempty"`
	DiskMiB   int    `json:"disk_mib,omitempty"` // 0: the image's size
	NoStart   bool   `json:"no_start,omitempty"`
	// Publish forwards host ports to the guest (user-mode networking).
	Publish []PortForward `json:"publish,omitempty"`
	// AllowHost are host loopback ports the guest reaches at its gateway
	// address (user-mode networking); it reaches nothing else of the host.
	AllowHost []int `json:"allow_host,omitempty"`
	// Network is NetworkUser (when empty) or NetworkBridge.
	Network string `json:"network,omitempty"`
	// Cold boots the VM even when its image has a warm snapshot, and
	// saves none.
	Cold bool `json:"cold,omitempty"`
}

// VM is a VM as the daemon reports it.
type VM struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	Image     string `json:"image"`
	State     string `json:"state"`
	CPUs      int    `json:"cpus"`
	MemoryMiB int    `json:"memory_mib"`
	DiskMiB   int    `json:"disk_mib"`
	Network   string `json:"network"`
	// Address is a bridged VM's IPv4 address on the bridge (no prefix),
	// the same for every boot; empty for user-mode networking.
	Address string `json:"address,omitempty"`
	// DNSName is a bridged VM's name in DNS, NAME.vm, which the daemon
	// answers for the host (loopback, --dns-port) and for bridged guests.
	DNSName     string        `json:"dns_name,omitempty"`
	Created     time.Time     `json:"created"`
	LastError   string        `json:"last_error,omitempty"`
	PID         int           `json:"pid,omitempty"`
	BootID      string        `json:"boot_id,omitempty"`
	InstanceDir string        `json:"instance_dir"`
	Ports       []PortForward `json:"ports,omitempty"`
	// AllowHost are the host loopback ports the guest reaches.
	AllowHost []int `json:"allow_host,omitempty"`
}

// VMRef names a VM.
type VMRef struct {
	Name string `json:"name"`
}

// VMStop is the params of vm.stop.
type VMStop struct {
	Name      string `json:"name"`
	TimeoutMS int    `json:"timeout_ms,omitempty"` // then it is killed
}

// VMDelete is the params of vm.delete.
type VMDelete struct {
	Name  string `json:"name"`
	Force bool   `json:"force,omitempty"` // delete a running VM (kill it first)
}

// VMLogs is the params of vm.logs: the console log from Offset.
type VMLogs struct {
	Name   string `json:"name"`
	Offset int64  `json:"offset"`
	Limit  int    `json:"limit,omitempty"`
}

// VMLogsResult is a slice of the console log.
type VMLogsResult struct {
	Data    []byte `json:"data"`
	Next    int64  `json:"next"`
	Running bool   `json:"running"`
}

// NetworkResetResult answers network.reset: what the root helper
// removed (banger's taps, bridges and NAT table).
type NetworkResetResult = privapi.ResetResult

// PruneResult lists what vm.prune deleted.
type PruneResult struct {
	Deleted []string `json:"deleted"`
}

// ValidName checks a VM or image name: a DNS label (RFC 1123) — lowercase
// letters, digits and '-', 1 to 63 of them, not starting or ending with
// '-' — so it can be a hostname and, later, NAME.vm in DNS.
func ValidName(kind, name string) error {
	bad := func(why string) error {
		return rpc.Errorf(rpc.CodeInvalidParams, "%s name %q %s; use 1-63 lowercase letters, digits and '-', not starting or ending with '-'", kind, name, why)
	}
	switch {
	case name == "":
		return bad("is empty")
	case len(name) > 63:
		return bad(fmt.Sprintf("is %d characters long", len(name)))
	case name[0] == '-' || name[len(name)-1] == '-':
		return bad("starts or ends with '-'")
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return bad(fmt.Sprintf("has %q", r))
		}
	}
	return nil
}

// Image is an image as the daemon reports it.
type Image struct {
	Name       string    `json:"name"`
	Digest     string    `json:"digest"`
	Created    time.Time `json:"created"`
	SizeBytes  int64     `json:"size_bytes"`
	RootfsMiB  int       `json:"rootfs_mib"`
	KernelArgs string    `json:"kernel_args,omitempty"`
	Dir        string    `json:"dir"`
	Notes      []string  `json:"notes,omitempty"`
	Problem    string    `json:"problem,omitempty"` // an image that cannot be read
	// OCI is what the OCI image it was made from says of itself.
	OCI *OCIImage `json:"oci,omitempty"`
	// BuildKey is the content key of the recipe and base an image was
	// built from (image.build.begin): the same key is the same image.
	BuildKey string `json:"build_key,omitempty"`
	// Warm is the image's warm snapshot, when it has one.
	Warm *WarmSnapshot `json:"warm,omitempty"`
	// Standby is what its standbys are, when the daemon keeps any.
	Standby *StandbyStatus `json:"standby,omitempty"`
}

// ImageImport is the params of image.import: absolute paths the daemon
// reads, exactly one root file system source. Without Kernel and
// KernelName the image boots banger's default kernel (the built
// DefaultKernel when there is one, else the host's).
type ImageImport struct {
	Name   string `json:"name"`
	Kernel string `json:"kernel,omitempty"`
	// KernelName names a built kernel (kernel.build.begin) instead of
	// a Kernel file.
	KernelName string `json:"kernel_name,omitempty"`
	Initrd     string `json:"initrd,omitempty"`
	RootfsDir  string `json:"rootfs_dir,omitempty"`
	RootfsTar  string `json:"rootfs_tar,omitempty"`
	RootfsExt4 string `json:"rootfs_ext4,omitempty"`
	// OCI is an OCI image reference (ParseOCIRef), local paths absolute.
	OCI        string `json:"oci,omitempty"`
	KernelArgs string `json:"kernel_args,omitempty"`
	SizeMiB    int    `json:"size_mib,omitempty"`
}

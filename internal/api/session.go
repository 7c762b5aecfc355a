package api

import "banger/internal/session"

// Methods of the daemon's stream socket (dirs.StreamSocket): their call
// goes on as a session (package session) after the response.
const (
	MethodVMExec    = "vm.exec"     // params VMExec
	MethodVMCopy    = "vm.copy"     // params VMCopy; the session's input is a tar stream
	MethodVMCopyOut = "vm.copy.out" // params VMCopyOut; the session's output is a tar stream
)

// Port methods, and the signal to an exec session (the rpc socket).
const (
	MethodVMExecSignal = "vm.exec.signal" // params VMExecSignal
	MethodVMPorts      = "vm.ports"
	MethodVMPortAdd    = "vm.port.add"
	MethodVMPortRemove = "vm.port.remove"
)

// VMExec is the params of vm.exec: a command to run in a running VM.
type VMExec struct {
	Name string `json:"name"`
	session.Exec
	// ImageCommand, with no Argv, runs the image's Entrypoint and Cmd
	// (an OCI image's), or the shell when it has neither: `vm run`
	// without a command, as `docker run` does.
	ImageCommand bool `json:"image_command,omitempty"`
}

// VMExecResult is the result of vm.exec, before its session starts.
type VMExecResult struct {
	// OpID is the op id of the exec call: vm.exec.signal names the
	// session with it, and `banger trace` finds the session's records.
	OpID string `json:"op_id"`
}

// VMExecSignal is the params of vm.exec.signal: a signal for the command
// of a running exec session. It goes on the rpc socket, apart from the
// session, so it never waits behind the session's input.
type VMExecSignal struct {
	Name   string `json:"name"`
	OpID   string `json:"op_id"`
	Signal int    `json:"signal"`
}

// VMCopy is the params of vm.copy: the session's input, a tar stream, is
// unpacked into Dir (absolute) in the VM.
type VMCopy struct {
	Name string `json:"name"`
	// Dir is absolute, or "~/PATH" in User's home.
	Dir string `json:"dir"`
	// User owns what is copied (session.Untar's); default: the image's
	// User, else root.
	User string `json:"user,omitempty"`
	// Top is session.Untar's: the stream is a copy of one file or
	// directory of that name, going into Dir or becoming it.
	Top string `json:"top,omitempty"`
}

// VMCopyOut is the params of vm.copy.out: the session's output (Stdout
// frames) is a tar stream of Path in the VM (session.Tar's), which the
// guest writes: whoever reads it must unpack it as hostile.
type VMCopyOut struct {
	Name string `json:"name"`
	// Path is absolute, or "~/PATH" in the home of the image's user.
	Path string `json:"path"`
	User string `json:"user,omitempty"`
}

// GuestPort is a listening socket in a guest.
type GuestPort struct {
	Proto   string `json:"proto"`   // "tcp" or "tcp6"
	Address string `json:"address"` // the bound address, e.g. "0.0.0.0"
	Port    int    `json:"port"`
}

// PortForward publishes a guest port on the host: connections to
// HostAddr:HostPort reach the guest's GuestPort.
type PortForward struct {
	Proto     string `json:"proto"`               // "tcp"
	HostAddr  string `json:"host_addr,omitempty"` // default 127.0.0.1
	HostPort  int    `json:"host_port"`
	GuestPort int    `json:"guest_port"`
}

// VMPort is the params of vm.port.add and vm.port.remove.
type VMPort struct {
	Name string `json:"name"`
	PortForward
}

// VMPorts answers vm.ports: what listens in the guest and what the host
// publishes.
type VMPorts struct {
	Listening []GuestPort   `json:"listening"`
	Published []PortForward `json:"published"`
}

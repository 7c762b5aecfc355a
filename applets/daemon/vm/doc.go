// Package vm is the VM lifecycle of the daemon: a VM's row in the state
// database, its engine process and its instance directory, kept in step
// through create, start, stop, restart, delete and a daemon's restart.
//
// A create (create.go) records the VM and runs its steps as an
// operation, each with its undo; its guest comes up by the first way
// that works of three (start.go): take a standby (standby.go), restore
// the image's warm snapshot (warmstarts.go), or boot. A VM is on a user
// network of its own (the engine's) or on banger's bridge through the
// root helper (bridge.go). Running VMs have published ports (ports.go),
// exec and copy sessions over the agent link (sessions.go), a bounded
// console (console.go), and an exit that is noticed (exit.go).
//
// The service talks to its engine, the image store and the guest's
// agent through small interfaces (deps.go: Engine, Process in its two
// roles, Machine and Agent, Images); package vm/qemu is the Engine on
// QEMU (with the user network and the agent link), images.go adapts the
// image store, and New takes them all from the daemon's composition root.
package vm

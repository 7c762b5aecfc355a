package rpc

import "syscall"

// errTooManyFiles is the accept error worth retrying after a pause.
const errTooManyFiles = syscall.EMFILE

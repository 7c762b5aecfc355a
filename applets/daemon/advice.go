package daemon

import "banger/internal/errdefs"

// The stores say what is wrong; the daemon, which knows the commands,
// adds what to run about it.

// advise adds advice to err when it is a failure of kind as a store
// returns it (unwrapped); other errors pass as they are.
func advise(err error, kind errdefs.Kind, advice string) error {
	if e, ok := err.(*errdefs.Error); ok && e.Kind == kind {
		return errdefs.Errorf(kind, "%s; %s", e.Message, advice)
	}
	return err
}

// noImage advises on an image that is not there.
func noImage(err error) error {
	return advise(err, errdefs.ErrNotFound, "`banger image list` shows the images there are")
}

// noKernel advises on a built kernel that is not there.
func noKernel(err error, name string) error {
	return advise(err, errdefs.ErrNotFound, "build it with `banger kernel build "+name+"`")
}

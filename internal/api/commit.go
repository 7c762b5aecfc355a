package api

import (
	"context"

	"banger/rpc"
)

// image.commit.begin makes a new image of a VM's disk, as an operation
// of kind KindImageCommit whose result is the Image.
const (
	MethodImageCommitBegin = "image.commit.begin"
	KindImageCommit        = "image.commit"
)

// ImageCommit is the params of image.commit.begin: the VM whose disk
// becomes the image called Name. A running VM is paused for the copy
// and runs on; a stopped one is copied as it is.
type ImageCommit struct {
	VM   string `json:"vm"`
	Name string `json:"name"`
}

// BeginCommitImage begins making an image of a VM's disk.
func (c Client) BeginCommitImage(ctx context.Context, p ImageCommit) (Operation, error) {
	return rpc.CallFor[Operation](ctx, c, MethodImageCommitBegin, p)
}

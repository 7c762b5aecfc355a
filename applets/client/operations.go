package client

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"banger/internal/api"
)

func newOperationCommand() *cli.Command {
	byID := func(call func(api.Client, context.Context, api.OperationID) (api.Operation, error)) cli.ActionFunc {
		return action(func(c *cli.Context, s *target) error {
			a, err := args(c, 1, 1)
			if err != nil {
				return err
			}
			op, err := call(s.daemon(), c.Context, api.OperationID{ID: a[0]})
			if err != nil {
				return err
			}
			return output(c, op, func(w io.Writer) { printOperation(w, op) })
		})
	}
	return &cli.Command{
		Name:  "operation",
		Usage: "the daemon's long-running operations (creating a VM, ...)",
		Subcommands: []*cli.Command{
			{
				Name:  "list",
				Usage: "list the operations the daemon holds (finished ones are kept 15 minutes)",
				Flags: []cli.Flag{jsonFlag()},
				Action: action(func(c *cli.Context, s *target) error {
					ops, err := s.daemon().ListOperations(c.Context)
					if err != nil {
						return err
					}
					return output(c, ops, func(w io.Writer) {
						tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
						fmt.Fprintln(tw, "ID\tKIND\tTARGET\tSTATE\tCREATED\tSTAGE")
						for _, op := range ops {
							fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", op.ID, op.Kind, op.Target, op.State, op.Created.Local().Format(time.DateTime), op.Current)
						}
						tw.Flush()
					})
				}),
			},
			{Name: "show", Usage: "show one operation and its stages", ArgsUsage: "OP_ID", Flags: []cli.Flag{jsonFlag()}, Action: byID(api.Client.OperationStatus)},
			{Name: "cancel", Usage: "ask an operation to stop and undo what it did", ArgsUsage: "OP_ID", Flags: []cli.Flag{jsonFlag()}, Action: byID(api.Client.CancelOperation)},
		},
	}
}

func printOperation(w io.Writer, op api.Operation) {
	fmt.Fprintf(w, "%s  %s %s  %s\n", op.ID, op.Kind, op.Target, op.State)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, st := range op.Stages {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", st.Name, st.State, fmtMillis(st.DurationMS), st.Error)
	}
	tw.Flush()
	if op.Error != nil {
		fmt.Fprintf(w, "error: %s\n", op.Error)
	}
}

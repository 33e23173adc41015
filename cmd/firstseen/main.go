// Command firstseen tags user-activity logs from Kafka with whether their
// user is new on that day, and writes them to ClickHouse.
//
//	firstseen run    the long-running (or --until-caught-up) processor
//	firstseen demo   the whole pipeline in-process, with no services needed
//
// Every flag can also be set by an environment variable: FIRSTSEEN_ and the
// flag name in upper case with dashes as underscores, e.g.
// FIRSTSEEN_CLICKHOUSE_ADDR, or in a YAML config file (--config). A flag
// given on the command line wins, then the environment, then the file.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	_ "time/tzdata" // --timezone works on machines without a zoneinfo database
)

func main() {
	if err := newRoot().Execute(); err != nil {
		var ue usageError
		fmt.Fprintln(os.Stderr, "firstseen:", err)
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// cobra: the de-facto CLI library of Go infrastructure tools (kubectl, etcd,
// Hugo); users know its help layout, and pflag gives GNU-style --flags.
func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "firstseen",
		Short: "Tag user-activity logs with is_new, exactly, in event time",
		Long: `firstseen consumes user-activity logs from Kafka, keeps every user's first-seen
time in local Pebble state, and writes each record to ClickHouse with is_new
(the user's first active day is the record's day) and late flags.

Records may arrive up to --tolerance out of order and still get the answer
they would get in event-time order. Offsets, watermarks and state are
checkpointed together, so a restart resumes exactly where it stopped.

Every flag can also come from the environment, FIRSTSEEN_<FLAG> (upper case,
dashes as underscores: FIRSTSEEN_CLICKHOUSE_ADDR), or from a YAML config file
(--config FILE or FIRSTSEEN_CONFIG) keyed by flag name. A flag on the command
line wins over the environment, which wins over the file. 'firstseen config
check' checks and prints the result. Passwords come only from
FIRSTSEEN_KAFKA_PASSWORD and FIRSTSEEN_CLICKHOUSE_PASSWORD, or from the files
--kafka-password-file and --clickhouse-password-file name.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newRunCmd(), newStatusCmd(), newBootstrapCmd(), newProduceCmd(), newGenerateCmd(), newStateCmd(), newDemoCmd(), newDevBrokerCmd(), newConfigCmd())
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageError{fmt.Errorf("%w\nrun '%s --help' for the flags", err, c.CommandPath())}
	})
	return root
}

// usageError is a problem with the command line; it exits with status 2.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

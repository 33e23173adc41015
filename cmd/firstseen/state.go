package main

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/firstseen/firstseen/engine/workload"
	"github.com/firstseen/firstseen/operators"
	"github.com/firstseen/firstseen/state"
)

func newStateCmd() *cobra.Command {
	var f pipelineFlags
	cmd := &cobra.Command{
		Use:   "state",
		Short: "Look inside a state directory without stopping anything",
		Long: `state reads --state-dir. When a running processor holds it, it reads the
newest snapshot that processor published (see run --snapshot-interval) and
says so; otherwise it reads the state itself.`,
	}
	f.addState(cmd.PersistentFlags())
	var partitions int
	get := &cobra.Command{
		Use:   "get UUID [UUID...]",
		Short: "Print a user's first_seen, key group and partition",
		Long: `get prints, for each uuid (any of the accepted spellings), its first_seen in
--timezone, its key group, and the partition the default Kafka partitioner
sends its canonical key to (with the partition count of the last checkpoint,
or --partitions). A uuid the state does not know prints "unknown".`,
		Args:    cobra.MinimumNArgs(1),
		PreRunE: preRun,
		RunE: func(cmd *cobra.Command, args []string) error {
			loc, err := time.LoadLocation(f.timezone)
			if err != nil {
				return usageError{fmt.Errorf("--timezone %q is not an IANA time zone name", f.timezone)}
			}
			db, snap, err := state.OpenForReading(f.stateDir)
			if err != nil {
				return err
			}
			defer db.Close()
			n := partitions
			if n <= 0 {
				if cp, ok, err := db.LoadCheckpoint(); err == nil && ok {
					n = len(cp.Partitions)
				}
			}
			rd, err := db.NewReader()
			if err != nil {
				return err
			}
			defer rd.Close()
			out := cmd.OutOrStdout()
			tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "uuid\tfirst_seen\tkey_group\tpartition")
			for _, a := range args {
				u, ok := operators.ParseUUID([]byte(a))
				if !ok {
					return usageError{fmt.Errorf("%q is not a uuid", a)}
				}
				part := "?"
				if n > 0 {
					part = strconv.Itoa(int(workload.Partition([]byte(u.String()), n)))
				}
				fs := "unknown"
				if v, ok := rd.Get(&u); ok {
					fs = time.UnixMilli(v).In(loc).Format("2006-01-02T15:04:05.000Z07:00")
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", u, fs, u.KeyGroup(), part)
			}
			tw.Flush()
			if snap {
				fmt.Fprintln(out, "(read from the newest snapshot: a processor holds the state)")
			}
			return nil
		},
	}
	get.Flags().IntVar(&partitions, "partitions", 0, "partition count of the topic (default: from the last checkpoint)")
	get.Flags().StringVar(&f.timezone, "timezone", "UTC", "IANA time zone for printing first_seen")

	stats := &cobra.Command{
		Use:     "stats",
		Short:   "Print users, bytes on disk per user, and the last checkpoint with its offsets and watermarks",
		Args:    noArgs,
		PreRunE: preRun,
		RunE: func(cmd *cobra.Command, _ []string) error {
			db, snap, err := state.OpenForReading(f.stateDir)
			if err != nil {
				return err
			}
			defer db.Close()
			return printStats(cmd.OutOrStdout(), db, snap)
		},
	}

	var output string
	export := &cobra.Command{
		Use:   "export",
		Short: "Write every user's first_seen as CSV (uuid,first_seen), which bootstrap reads back",
		Long: `export writes a CSV with the header "uuid,first_seen": canonical uuids and
RFC 3339 UTC times with milliseconds. 'firstseen bootstrap' reads it back
into an identical state, so export and bootstrap move or back up a state.`,
		Args:    noArgs,
		PreRunE: preRun,
		RunE: func(cmd *cobra.Command, _ []string) error {
			db, _, err := state.OpenForReading(f.stateDir)
			if err != nil {
				return err
			}
			defer db.Close()
			var w io.Writer = cmd.OutOrStdout()
			if output != "" && output != "-" {
				file, err := os.Create(output)
				if err != nil {
					return err
				}
				defer file.Close()
				w = file
			}
			bw := bufio.NewWriterSize(w, 1<<20)
			n, err := exportCSV(bw, db)
			if err != nil {
				return err
			}
			if err := bw.Flush(); err != nil {
				return err
			}
			if f, ok := w.(*os.File); ok && f != os.Stdout {
				if err := f.Sync(); err != nil {
					return err
				}
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "exported %d users\n", n)
			return nil
		},
	}
	export.Flags().StringVar(&output, "output", "-", "file to write (- for stdout)")
	cmd.AddCommand(get, stats, export)
	return cmd
}

// exportCSV writes uuid,first_seen for every user in key order.
func exportCSV(w *bufio.Writer, db *state.DB) (int64, error) {
	w.WriteString("uuid,first_seen\n")
	var n int64
	buf := make([]byte, 0, 64)
	err := db.EachUser(func(u operators.UUID, firstSeen int64) error {
		buf = u.AppendCanonical(buf[:0])
		buf = append(buf, ',')
		buf = time.UnixMilli(firstSeen).UTC().AppendFormat(buf, "2006-01-02T15:04:05.000Z07:00")
		buf = append(buf, '\n')
		n++
		_, err := w.Write(buf)
		return err
	})
	return n, err
}

func printStats(out io.Writer, db *state.DB, snap bool) error {
	users, err := db.Users()
	if err != nil {
		return err
	}
	bytes := db.DiskBytes()
	perUser := math.NaN()
	if users > 0 {
		perUser = float64(bytes) / float64(users)
	}
	fmt.Fprintf(out, "users            %d\nbytes on disk    %d (SST files and live write-ahead log)\nbytes per user   %.1f\n", users, bytes, perUser)
	if snap {
		fmt.Fprintln(out, "source           the newest snapshot (a processor holds the state)")
	}
	cp, ok, err := db.LoadCheckpoint()
	if err != nil {
		return err
	}
	if !ok {
		fmt.Fprintln(out, "checkpoint       none (bootstrap only, or never run)")
		return nil
	}
	fmt.Fprintf(out, "checkpoint       epoch %d at %s\ntopic            %s (group %s)\ntime zone        %s, tolerance %s\n",
		cp.Epoch, cp.Time.UTC().Format(time.RFC3339), cp.Topic, cp.Group, cp.Timezone, cp.Tolerance)
	if in, ok, err := db.LoadIntent(); err == nil && ok {
		fmt.Fprintf(out, "unfinished       epoch %d is being written (or was, when the process stopped)\n", in.Epoch)
	}
	parts := make([]int32, 0, len(cp.Partitions))
	for p := range cp.Partitions {
		parts = append(parts, p)
	}
	sort.Slice(parts, func(i, j int) bool { return parts[i] < parts[j] })
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "\npartition\tnext offset\twatermark\tmax event time\theld")
	for _, p := range parts {
		pc := cp.Partitions[p]
		held, err := db.LoadHeld(p)
		if err != nil {
			return err
		}
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%d\n", p, pc.NextOffset, fmtMillis(pc.Watermark), fmtMillis(pc.MaxEventTime), len(held))
	}
	return tw.Flush()
}

func fmtMillis(ms int64) string {
	if ms == operators.NoWatermark {
		return "-"
	}
	return time.UnixMilli(ms).UTC().Format("2006-01-02T15:04:05.000Z")
}

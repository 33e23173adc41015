package main

import (
	"bufio"
	"bytes"
	"container/heap"
	encbin "encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/firstseen/firstseen/operators"
	"github.com/firstseen/firstseen/state"
)

func newStateCmd() *cobra.Command {
	var f pipelineFlags
	cmd := &cobra.Command{
		Use:   "state",
		Short: "Look inside a processor's state directory without stopping anything",
		Long: `state reads --state-dir, the local state of one processor: a database per
input partition it owns, in partition-N directories. For each partition that a
running processor holds, it reads the newest snapshot that processor
published (see run --snapshot-interval) and says so; otherwise it reads the
partition's database itself.`,
	}
	f.addState(cmd.PersistentFlags())
	var partitions int
	get := &cobra.Command{
		Use:   "get UUID [UUID...]",
		Short: "Print a user's first_seen, key group and the partition whose state holds it",
		Long: `get prints, for each uuid (any of the accepted spellings), its first_seen in
--timezone, its key group, and the partition whose state in --state-dir
holds it (several, comma-separated, if its records were on several
partitions; first_seen is then the earliest). A uuid the state does not
know prints "unknown" and partition "-": another replica may own its
partition. With --partitions (the topic's partition count) a column "home"
tells the partition its records belong on (the canonical uuid's Kafka key
partition).`,
		Args:    cobra.MinimumNArgs(1),
		PreRunE: preRun,
		RunE: func(cmd *cobra.Command, args []string) error {
			loc, err := time.LoadLocation(f.timezone)
			if err != nil {
				return usageError{fmt.Errorf("--timezone %q is not an IANA time zone name", f.timezone)}
			}
			if partitions < 0 {
				return usageError{fmt.Errorf("--partitions %d must be 0 (unknown) or above", partitions)}
			}
			users := make([]operators.UUID, len(args))
			for i, a := range args {
				u, ok := operators.ParseUUID([]byte(a))
				if !ok {
					return usageError{fmt.Errorf("%q is not a uuid", a)}
				}
				users[i] = u
			}
			type found struct {
				first int64
				parts []string
			}
			res := make([]found, len(users))
			var snaps []int32
			err = eachPartitionState(f.stateDir, func(ps *partitionState) error {
				if ps.snap {
					snaps = append(snaps, ps.part)
				}
				rd, err := ps.db.NewReader()
				if err != nil {
					return err
				}
				defer rd.Close()
				for i := range users {
					if v, ok := rd.Get(&users[i]); ok {
						if len(res[i].parts) == 0 || v < res[i].first {
							res[i].first = v
						}
						res[i].parts = append(res[i].parts, strconv.Itoa(int(ps.part)))
					}
				}
				return nil
			})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
			head := "uuid\tfirst_seen\tkey_group\tpartition"
			if partitions > 0 {
				head += "\thome"
			}
			fmt.Fprintln(tw, head)
			for i := range users {
				u := &users[i]
				fs, part := "unknown", "-"
				if len(res[i].parts) > 0 {
					fs = time.UnixMilli(res[i].first).In(loc).Format("2006-01-02T15:04:05.000Z07:00")
					part = strings.Join(res[i].parts, ",")
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s", u, fs, u.KeyGroup(), part)
				if partitions > 0 {
					fmt.Fprintf(tw, "\t%d", operators.PartitionOf(u, partitions))
				}
				fmt.Fprintln(tw)
			}
			tw.Flush()
			if len(snaps) > 0 {
				fmt.Fprintf(out, "(partitions %s read from the newest snapshot: a processor holds them)\n", joinParts(snaps))
			}
			return nil
		},
	}
	get.Flags().IntVar(&partitions, "partitions", 0, "partition count of the topic: also print the partition each uuid's records belong on")
	get.Flags().StringVar(&f.timezone, "timezone", "UTC", "IANA time zone for printing first_seen")

	stats := &cobra.Command{
		Use:     "stats",
		Short:   "Print users, bytes on disk per user, and each partition's users, checkpoint, offsets and watermarks",
		Args:    noArgs,
		PreRunE: preRun,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var parts []partitionSummary
			err := eachPartitionState(f.stateDir, func(ps *partitionState) error {
				s, err := summarizePartition(ps)
				parts = append(parts, s)
				return err
			})
			if err != nil {
				return err
			}
			return printStats(cmd.OutOrStdout(), parts)
		},
	}

	var output string
	export := &cobra.Command{
		Use:   "export",
		Short: "Write every user's first_seen as CSV (uuid,first_seen), which bootstrap reads back",
		Long: `export writes a CSV with the header "uuid,first_seen": canonical uuids and
RFC 3339 UTC times with milliseconds, the users of all partitions in
--state-dir in key order (a user held by several partitions once, with the
earliest time). 'firstseen bootstrap' reads it back, so export and bootstrap
move or back up the users.`,
		Args:    noArgs,
		PreRunE: preRun,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ps, err := openPartitionStates(f.stateDir)
			if err != nil {
				return err
			}
			defer closePartitionStates(ps)
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
			dbs := make([]*state.DB, len(ps))
			for i := range ps {
				dbs[i] = ps[i].db
			}
			n, err := exportCSV(bw, dbs)
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
			fmt.Fprintf(cmd.ErrOrStderr(), "exported %d users of %d partitions\n", n, len(ps))
			return nil
		},
	}
	export.Flags().StringVar(&output, "output", "-", "file to write (- for stdout)")
	cmd.AddCommand(get, stats, export)
	return cmd
}

// partitionState is one partition's database in a state directory, open
// for reading.
type partitionState struct {
	part int32
	db   *state.DB
	snap bool // read from the newest snapshot: a processor holds it
}

const partitionDirPrefix = "partition-"

// partitionDirs lists the partition-N directories of a state directory by
// partition.
func partitionDirs(stateDir string) ([]int32, error) {
	entries, err := os.ReadDir(stateDir)
	if err != nil {
		return nil, fmt.Errorf("state dir %s: %w", stateDir, err)
	}
	var parts []int32
	for _, e := range entries {
		n, ok := strings.CutPrefix(e.Name(), partitionDirPrefix)
		if !ok || !e.IsDir() {
			continue
		}
		p, err := strconv.ParseInt(n, 10, 32)
		if err != nil || p < 0 || strconv.FormatInt(p, 10) != n {
			continue
		}
		parts = append(parts, int32(p))
	}
	slices.Sort(parts)
	if len(parts) == 0 {
		// Pebble v2 marks a database's manifest with marker.manifest.* files
		// (there is no CURRENT file).
		if m, _ := filepath.Glob(filepath.Join(stateDir, "marker.manifest.*")); len(m) > 0 {
			return nil, fmt.Errorf("state dir %s holds a state of an older firstseen (one database for all partitions): "+
				"this firstseen reads a database per partition, in partition-N directories", stateDir)
		}
		return nil, fmt.Errorf("state dir %s holds no state: no partition-N directories (a processor makes one for "+
			"each input partition it owns)", stateDir)
	}
	return parts, nil
}

// openPartition opens a partition's database for reading; ok is false when
// its directory went away (its processor gave the partition up).
func openPartition(stateDir string, part int32) (ps partitionState, ok bool, err error) {
	dir := filepath.Join(stateDir, partitionDirPrefix+strconv.Itoa(int(part)))
	db, snap, err := state.OpenForReading(dir)
	if err != nil {
		if _, serr := os.Stat(dir); errors.Is(serr, os.ErrNotExist) {
			return ps, false, nil
		}
		return ps, false, fmt.Errorf("partition %d: %w", part, err)
	}
	return partitionState{part: part, db: db, snap: snap}, true, nil
}

// eachPartitionState opens the partitions of stateDir one at a time and
// calls fn with each.
func eachPartitionState(stateDir string, fn func(ps *partitionState) error) error {
	parts, err := partitionDirs(stateDir)
	if err != nil {
		return err
	}
	for _, p := range parts {
		ps, ok, err := openPartition(stateDir, p)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		err = fn(&ps)
		if cerr := ps.db.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// openPartitionStates opens all partitions of stateDir; the caller closes
// them with closePartitionStates.
func openPartitionStates(stateDir string) ([]partitionState, error) {
	parts, err := partitionDirs(stateDir)
	if err != nil {
		return nil, err
	}
	var out []partitionState
	for _, p := range parts {
		ps, ok, err := openPartition(stateDir, p)
		if err != nil {
			closePartitionStates(out)
			return nil, err
		}
		if ok {
			out = append(out, ps)
		}
	}
	return out, nil
}

func closePartitionStates(ps []partitionState) {
	for i := range ps {
		ps[i].db.Close()
	}
}

func joinParts(parts []int32) string {
	s := make([]string, len(parts))
	for i, p := range parts {
		s[i] = strconv.Itoa(int(p))
	}
	return strings.Join(s, ", ")
}

// exportCSV writes uuid,first_seen for every user of dbs in key order (the
// order of one database's keys), a user in several databases once, with
// the minimum.
func exportCSV(w *bufio.Writer, dbs []*state.DB) (int64, error) {
	w.WriteString("uuid,first_seen\n")
	var n int64
	buf := make([]byte, 0, 64)
	emit := func(u *operators.UUID, firstSeen int64) error {
		buf = u.AppendCanonical(buf[:0])
		buf = append(buf, ',')
		buf = time.UnixMilli(firstSeen).UTC().AppendFormat(buf, "2006-01-02T15:04:05.000Z07:00")
		buf = append(buf, '\n')
		n++
		_, err := w.Write(buf)
		return err
	}
	if len(dbs) == 1 {
		err := dbs[0].EachUser(func(u operators.UUID, firstSeen int64) error { return emit(&u, firstSeen) })
		return n, err
	}
	err := mergeUsers(dbs, emit)
	return n, err
}

// exportUser is a user in key order: key group (big-endian) and uuid.
type exportUser struct {
	key [18]byte
	t   int64
}

func (e *exportUser) uuid() *operators.UUID { return (*operators.UUID)(e.key[2:]) }

// userStream reads one database's users in key order, in chunks, from a
// goroutine.
type userStream struct {
	ch    chan []exportUser
	chunk []exportUser
	err   error // set before ch is closed
}

const exportChunk = 4096

func startUserStream(db *state.DB, stop <-chan struct{}) *userStream {
	s := &userStream{ch: make(chan []exportUser, 2)}
	go func() {
		defer close(s.ch)
		chunk := make([]exportUser, 0, exportChunk)
		send := func() bool {
			select {
			case s.ch <- chunk:
				chunk = make([]exportUser, 0, exportChunk)
				return true
			case <-stop:
				return false
			}
		}
		errStop := errors.New("stopped")
		err := db.EachUser(func(u operators.UUID, firstSeen int64) error {
			var e exportUser
			encbin.BigEndian.PutUint16(e.key[:2], u.KeyGroup())
			copy(e.key[2:], u[:])
			e.t = firstSeen
			chunk = append(chunk, e)
			if len(chunk) == exportChunk && !send() {
				return errStop
			}
			return nil
		})
		if err == nil && len(chunk) > 0 {
			send()
		}
		if err != nil && err != errStop {
			s.err = err
		}
	}()
	return s
}

// next advances to the stream's next user; false at its end.
func (s *userStream) next() bool {
	if len(s.chunk) > 1 {
		s.chunk = s.chunk[1:]
		return true
	}
	c, ok := <-s.ch
	s.chunk = c
	return ok
}

// streamHeap orders streams by their current user's key.
type streamHeap []*userStream

func (h streamHeap) Len() int { return len(h) }
func (h streamHeap) Less(i, j int) bool {
	return bytes.Compare(h[i].chunk[0].key[:], h[j].chunk[0].key[:]) < 0
}
func (h streamHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *streamHeap) Push(x any)   { *h = append(*h, x.(*userStream)) }
func (h *streamHeap) Pop() any {
	old := *h
	s := old[len(old)-1]
	*h = old[:len(old)-1]
	return s
}

// mergeUsers calls fn for every user of dbs in key order, once, with the
// earliest first_seen the databases hold for it.
func mergeUsers(dbs []*state.DB, fn func(u *operators.UUID, firstSeen int64) error) error {
	stop := make(chan struct{})
	streams := make([]*userStream, len(dbs))
	for i, db := range dbs {
		streams[i] = startUserStream(db, stop)
	}
	defer func() {
		close(stop)
		for _, s := range streams {
			for range s.ch { // let the goroutine end
			}
		}
	}()
	h := streamHeap{}
	for _, s := range streams {
		if s.next() {
			h = append(h, s)
		}
	}
	heap.Init(&h)
	var cur exportUser
	have := false
	for len(h) > 0 {
		s := h[0]
		e := s.chunk[0]
		if s.next() {
			heap.Fix(&h, 0)
		} else {
			heap.Pop(&h)
		}
		switch {
		case have && cur.key == e.key:
			cur.t = min(cur.t, e.t)
			continue
		case have:
			if err := fn(cur.uuid(), cur.t); err != nil {
				return err
			}
		}
		cur, have = e, true
	}
	if have {
		if err := fn(cur.uuid(), cur.t); err != nil {
			return err
		}
	}
	for _, s := range streams {
		if s.err != nil {
			return s.err
		}
	}
	return nil
}

// partitionSummary is what stats shows of a partition.
type partitionSummary struct {
	part       int32
	users      int64
	bytes      int64
	snap       bool
	checkpoint bool
	header     state.Header
	time       time.Time
	pc         state.PartitionCheckpoint
	held       int
	unfinished bool
	intent     uint64
}

func summarizePartition(ps *partitionState) (partitionSummary, error) {
	s := partitionSummary{part: ps.part, snap: ps.snap, bytes: ps.db.DiskBytes()}
	var err error
	if s.users, err = ps.db.Users(); err != nil {
		return s, err
	}
	cp, ok, err := ps.db.LoadCheckpoint()
	if err != nil {
		return s, fmt.Errorf("partition %d: %w", ps.part, err)
	}
	if ok {
		s.checkpoint, s.header, s.time = true, cp.Header, cp.Time
		s.pc, ok = cp.Partitions[ps.part]
		if ok {
			held, err := ps.db.LoadHeld(ps.part)
			if err != nil {
				return s, err
			}
			s.held = len(held)
		} else {
			s.pc.Watermark, s.pc.MaxEventTime = operators.NoWatermark, operators.NoWatermark
		}
	}
	if in, ok, err := ps.db.LoadIntent(); err == nil && ok {
		s.unfinished, s.intent = true, in.Epoch
	}
	return s, nil
}

func printStats(out io.Writer, parts []partitionSummary) error {
	var users, bytes int64
	var snaps []int32
	var newest *partitionSummary
	for i := range parts {
		p := &parts[i]
		users += p.users
		bytes += p.bytes
		if p.snap {
			snaps = append(snaps, p.part)
		}
		if p.checkpoint && (newest == nil || p.time.After(newest.time)) {
			newest = p
		}
	}
	perUser := math.NaN()
	if users > 0 {
		perUser = float64(bytes) / float64(users)
	}
	all := make([]int32, len(parts))
	for i := range parts {
		all[i] = parts[i].part
	}
	fmt.Fprintf(out, "users            %d\nbytes on disk    %d (SST files and live write-ahead logs)\nbytes per user   %.1f\n", users, bytes, perUser)
	fmt.Fprintf(out, "partitions       %s\n", joinParts(all))
	if len(snaps) > 0 {
		fmt.Fprintf(out, "source           the newest snapshot of partitions %s (a processor holds them)\n", joinParts(snaps))
	}
	if newest == nil {
		fmt.Fprintln(out, "checkpoint       none")
	} else {
		h := &newest.header
		fmt.Fprintf(out, "checkpoint       epoch %d at %s (the newest)\ntopic            %s (group %s)\ntime zone        %s, tolerance %s\n",
			h.Epoch, newest.time.UTC().Format(time.RFC3339), h.Topic, h.Group, h.Timezone, h.Tolerance)
	}
	for _, p := range parts {
		if p.unfinished {
			fmt.Fprintf(out, "unfinished       partition %d: epoch %d is being written (or was, when the process stopped)\n", p.part, p.intent)
		}
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "\npartition\tusers\tnext offset\twatermark\tmax event time\theld\tchangelog next")
	for _, p := range parts {
		if !p.checkpoint {
			fmt.Fprintf(tw, "%d\t%d\t-\t-\t-\t-\t-\n", p.part, p.users)
			continue
		}
		fmt.Fprintf(tw, "%d\t%d\t%d\t%s\t%s\t%d\t%d\n", p.part, p.users, p.pc.NextOffset, fmtMillis(p.pc.Watermark),
			fmtMillis(p.pc.MaxEventTime), p.held, p.pc.ChangelogNext)
	}
	return tw.Flush()
}

func fmtMillis(ms int64) string {
	if ms == operators.NoWatermark {
		return "-"
	}
	return time.UnixMilli(ms).UTC().Format("2006-01-02T15:04:05.000Z")
}

// Package filesink is an exactly-once sink that writes rows to a directory
// of immutable files, partitioned by event date as data lakes (Hive-style
// partitioning: Spark, Trino, DuckDB, ClickHouse's file engines) expect.
// The demo uses it when no ClickHouse is reachable.
//
// # Layout and naming
//
// Each [Sink.Write] (one checkpoint batch) writes, for every event date and
// source partition in the batch, one file holding that partition's rows of
// that date, in batch order:
//
//	DIR/event_date=2026-11-22/part-p0003-o000000000123-000000000456.jsonl
//
// p is the source (Kafka) partition, o the first and the last source offset
// of the rows in the file. The extension names the format: .jsonl or
// .parquet. Names starting with "." or "_" are not data: readers (and
// [ReadDir]) ignore them.
//
// # Atomicity
//
// A file is written under a temporary name in its date directory
// (".tmp-<random>-<final name>"), fsynced, closed, renamed to its final name,
// and the directory is fsynced (and the parent, when the date directory is
// new). A file is therefore visible whole or not at all. Write returns nil
// only when every file of the batch is renamed and the directories are
// fsynced. A Write that fails removes the temporary files it made; files it
// already renamed stay (they are whole) and a retry skips their rows. A
// crash can leave temporary files behind: [Open] removes them, since their
// rows were never acknowledged. (Sinks of several processes sharing one
// directory should each be opened before any of them writes: an Open
// removes the others' temporary files in flight, which makes those Writes
// fail and be retried.)
//
// # Exactly once
//
// Every row (a source partition and offset) is emitted by exactly one
// checkpoint epoch, and the engine replays an unfinished epoch with the same
// rows. A normal Write therefore has nothing to check: its rows are not
// stored yet. A replay (Batch.Retry) and any Write after a failed one (which
// may have renamed some of its files before failing) read back the files of
// the dates and partitions the batch touches and skip the rows already in
// them. The check reads rows, not offset ranges from the names: a file's
// range may enclose offsets of rows that another epoch writes (a record held
// for the watermark is emitted later than the records after it). Names
// never collide: two files with the same partition and first offset would
// both hold that row.
//
// # Formats
//
// JSON Lines (.jsonl, the default): one row per line in the JSON form of
// package sinks ([sinks.AppendJSON]).
//
// Parquet (.parquet): one row group per file (Snappy), with the columns of
// the JSON form: uuid (string), event_time (timestamp ms, UTC), event_date
// (date), first_seen (timestamp ms), is_new and late (uint8, 0 or 1),
// src_partition (int32), src_offset (int64), kafka_time (timestamp ms),
// payload (string, the record's JSON). ClickHouse 18.16, the version the
// tests run against, cannot read it: system.formats has no Parquet (it
// arrived in ClickHouse 19.x), and both SELECT * FROM
// file('x.parquet', 'Parquet', 'uuid String') and INSERT ... FORMAT Parquet
// fail with "Code: 73. DB::Exception: Unknown format Parquet" (Debian's
// 18.16 packages have no clickhouse-local either). Newer ClickHouse,
// DuckDB and Spark read it; the tests read it back with parquet-go.
//
// [ReadDir] reads every visible file of a directory back, in both formats.
package filesink

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/firstseen/firstseen/sinks"
)

// Format is the file format of a sink.
type Format string

// The formats.
const (
	JSONL   Format = "jsonl"
	Parquet Format = "parquet"
)

// ParseFormat returns the format named s: "jsonl" (or "") or "parquet".
func ParseFormat(s string) (Format, error) {
	switch Format(s) {
	case "", JSONL:
		return JSONL, nil
	case Parquet:
		return Parquet, nil
	}
	return "", fmt.Errorf("unknown file format %q (want jsonl or parquet)", s)
}

const (
	datePrefix = "event_date="
	tmpPrefix  = ".tmp-"
	// flushAt is the buffer size at which a JSON Lines file gets its lines
	// before the end of its rows.
	flushAt = 1 << 20
)

var _ sinks.Sink = (*Sink)(nil)

// Hooks that tests replace to make the destination fail.
var (
	syncFile   = (*os.File).Sync
	renameFile = os.Rename
)

// span is the offset range of one file of a date directory.
type span struct {
	partition   int32
	first, last int64
}

// group is the rows of one file of a batch: one date, one partition.
type group struct {
	date      int32
	partition int32
	rows      []rowRef
}

type rowRef struct {
	part *sinks.Batch
	i    int32
}

// Sink writes batches to a directory. Its methods are safe for concurrent
// use (Writes are serialized).
type Sink struct {
	dir    string
	format Format

	mu     sync.Mutex
	closed bool
	// unsure: the last Write failed and may have stored some of its
	// files, so the next one checks what is stored.
	unsure bool
	groups map[[2]int32]*group
	order  []*group
	buf    []byte
	pq     *parquetEncoder
}

// Open opens a sink writing files of format f under dir, creating dir when
// missing, and removes the temporary files a crash left behind.
func Open(dir string, f Format) (*Sink, error) {
	f, err := ParseFormat(string(f))
	if err != nil {
		return nil, fmt.Errorf("filesink %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("filesink %s: %w", dir, err)
	}
	if err := removeTemps(dir); err != nil {
		return nil, fmt.Errorf("filesink %s: %w", dir, err)
	}
	return &Sink{dir: dir, format: f, groups: map[[2]int32]*group{}}, nil
}

// removeTemps removes the temporary files under the date directories of
// dir, and fsyncs the directories it removed some from.
func removeTemps(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), datePrefix) {
			continue
		}
		sub := filepath.Join(dir, e.Name())
		files, err := os.ReadDir(sub)
		if err != nil {
			return err
		}
		removed := false
		for _, f := range files {
			if strings.HasPrefix(f.Name(), tmpPrefix) {
				if err := os.Remove(filepath.Join(sub, f.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
					return err
				}
				removed = true
			}
		}
		if removed {
			if err := syncDir(sub); err != nil {
				return err
			}
		}
	}
	return nil
}

// Dir is the directory the sink writes to.
func (s *Sink) Dir() string { return s.dir }

// Format is the sink's file format.
func (s *Sink) Format() Format { return s.format }

// dateDir is the name of the directory of date (days since 1970-01-01).
func dateDir(date int32) string {
	return string(sinks.AppendDate([]byte(datePrefix), date))
}

// FileName is the name of the file of the rows of source partition p with
// offsets first to last, in format f.
func FileName(p int32, first, last int64, f Format) string {
	return fmt.Sprintf("part-p%04d-o%012d-%012d.%s", p, first, last, f)
}

// parseName returns the span of a data file's name; ok is false for other
// names.
func parseName(name string) (sp span, ok bool) {
	if !strings.HasPrefix(name, "part-p") {
		return span{}, false
	}
	ext := filepath.Ext(name)
	if ext != "."+string(JSONL) && ext != "."+string(Parquet) {
		return span{}, false
	}
	fields := strings.Split(strings.TrimSuffix(strings.TrimPrefix(name, "part-p"), ext), "-")
	if len(fields) != 3 || !strings.HasPrefix(fields[1], "o") {
		return span{}, false
	}
	p, err1 := strconv.ParseInt(fields[0], 10, 32)
	first, err2 := strconv.ParseInt(fields[1][1:], 10, 64)
	last, err3 := strconv.ParseInt(fields[2], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || first > last {
		return span{}, false
	}
	return span{int32(p), first, last}, true
}

// storedRows reads back the rows already stored for the dates and
// partitions that b has rows of, keyed by partition and offset.
func (s *Sink) storedRows(b *sinks.Batch) (map[[2]int64]bool, error) {
	want := map[int32]map[int32]bool{} // date -> partitions
	for _, part := range b.Parts() {
		for i := range part.Len() {
			d := part.EventDate[i]
			if want[d] == nil {
				want[d] = map[int32]bool{}
			}
			want[d][part.Partition[i]] = true
		}
	}
	stored := map[[2]int64]bool{}
	for date, parts := range want {
		dir := filepath.Join(s.dir, dateDir(date))
		ents, err := os.ReadDir(dir)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for _, e := range ents {
			sp, ok := parseName(e.Name())
			if !ok || !parts[sp.partition] {
				continue
			}
			lines, err := readFile(filepath.Join(dir, e.Name()))
			if err != nil {
				return nil, err
			}
			for _, l := range lines {
				stored[[2]int64{int64(l.Partition), l.Offset}] = true
			}
		}
	}
	return stored, nil
}

// Write stores the rows of b that are not stored yet, one file per event
// date and source partition, and returns when every file is visible and
// durable. An empty batch is a no-op.
func (s *Sink) Write(ctx context.Context, b *sinks.Batch) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("filesink %s: write after Close", s.dir)
	}
	if b.Len() == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	err := s.write(ctx, b)
	clear(s.groups)
	clear(s.order)
	s.order = s.order[:0]
	if cap(s.buf) > 4*flushAt {
		s.buf = nil
	}
	s.unsure = err != nil
	if err != nil {
		return fmt.Errorf("filesink %s: write of %d row(s): %w", s.dir, b.Len(), err)
	}
	return nil
}

func (s *Sink) write(ctx context.Context, b *sinks.Batch) error {
	// Group the rows by (date, partition), in batch order, skipping the
	// stored ones when some may be.
	var stored map[[2]int64]bool
	if b.Retry || s.unsure {
		var err error
		if stored, err = s.storedRows(b); err != nil {
			return err
		}
	}
	for _, part := range b.Parts() {
		for i := range part.Len() {
			date, p := part.EventDate[i], part.Partition[i]
			if stored[[2]int64{int64(p), part.Offset[i]}] {
				continue
			}
			g := s.groups[[2]int32{date, p}]
			if g == nil {
				g = &group{date: date, partition: p}
				s.order = append(s.order, g)
				s.groups[[2]int32{date, p}] = g
			}
			g.rows = append(g.rows, rowRef{part, int32(i)})
		}
	}
	// Write the files; the order of dates, then partitions, is only for
	// readable logs and tests.
	sort.Slice(s.order, func(i, j int) bool {
		a, b := s.order[i], s.order[j]
		return a.date < b.date || a.date == b.date && a.partition < b.partition
	})
	dirs := map[int32]bool{}
	newDirs := false
	for _, g := range s.order {
		if err := ctx.Err(); err != nil {
			return err
		}
		dir := filepath.Join(s.dir, dateDir(g.date))
		if !dirs[g.date] {
			dirs[g.date] = true
			if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
				if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
					return err
				}
				newDirs = true
			}
		}
		if _, err := s.writeFile(dir, g); err != nil {
			return err
		}
	}
	for date := range dirs {
		if err := syncDir(filepath.Join(s.dir, dateDir(date))); err != nil {
			return err
		}
	}
	if newDirs {
		return syncDir(s.dir)
	}
	return nil
}

// writeFile writes the rows of g to a temporary file in dir and renames it
// to its final name.
func (s *Sink) writeFile(dir string, g *group) (span, error) {
	first := g.rows[0].part.Offset[g.rows[0].i]
	last := first
	for _, r := range g.rows {
		off := r.part.Offset[r.i]
		first, last = min(first, off), max(last, off)
	}
	name := FileName(g.partition, first, last, s.format)
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	tmp := filepath.Join(dir, tmpPrefix+hex.EncodeToString(rnd[:])+"-"+name)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return span{}, err
	}
	if s.format == Parquet {
		if s.pq == nil {
			s.pq = newParquetEncoder()
		}
		err = s.pq.encode(f, g.rows)
	} else {
		err = s.writeJSONL(f, g.rows)
	}
	if err == nil {
		err = syncFile(f)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = renameFile(tmp, filepath.Join(dir, name))
	}
	if err != nil {
		_ = os.Remove(tmp)
		return span{}, err
	}
	return span{g.partition, first, last}, nil
}

func (s *Sink) writeJSONL(w io.Writer, rows []rowRef) error {
	buf := s.buf[:0]
	defer func() { s.buf = buf[:0] }()
	for _, r := range rows {
		buf = append(sinks.AppendJSON(buf, r.part, int(r.i)), '\n')
		if len(buf) >= flushAt {
			if _, err := w.Write(buf); err != nil {
				return err
			}
			buf = buf[:0]
		}
	}
	_, err := w.Write(buf)
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// Close releases the sink. It is safe to call more than once; a Write after
// it fails.
func (s *Sink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.buf, s.pq = nil, nil
	return nil
}

// Line is one row of a file written by [Sink].
type Line = sinks.Line

// ReadDir reads back the rows of every visible data file under dir (the
// event_date=* directories; both formats, told apart by extension),
// ignoring names that start with "." or "_". Files come in name order, rows
// in file order.
func ReadDir(dir string) ([]Line, error) {
	dates, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []Line
	for _, d := range dates {
		if !d.IsDir() || hidden(d.Name()) {
			continue
		}
		sub := filepath.Join(dir, d.Name())
		files, err := os.ReadDir(sub)
		if err != nil {
			return nil, err
		}
		for _, f := range files {
			if f.IsDir() || hidden(f.Name()) {
				continue
			}
			if ext := filepath.Ext(f.Name()); ext != ".jsonl" && ext != ".parquet" {
				continue
			}
			lines, err := readFile(filepath.Join(sub, f.Name()))
			if err != nil {
				return nil, err
			}
			out = append(out, lines...)
		}
	}
	return out, nil
}

// readFile reads one data file, by its extension.
func readFile(path string) ([]Line, error) {
	if filepath.Ext(path) == ".parquet" {
		return readParquet(path)
	}
	return readJSONL(path)
}

func hidden(name string) bool { return strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") }

func readJSONL(path string) ([]Line, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 1<<16)
	var out []Line
	for n := 1; ; n++ {
		raw, err := r.ReadBytes('\n')
		if err == io.EOF {
			if len(raw) > 0 {
				return nil, fmt.Errorf("%s:%d: line without its newline", path, n)
			}
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		l, err := sinks.ParseJSON(raw)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
		out = append(out, l)
	}
}

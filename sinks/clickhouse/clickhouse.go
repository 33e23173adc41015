// Package clickhouse is the production sink: it writes enriched rows to a
// ClickHouse MergeTree table over the native protocol (clickhouse-go/v2).
//
// [Open] connects, reads the server version, and creates the database and
// the table when they are missing:
//
//	CREATE TABLE IF NOT EXISTS db.table (
//	  event_date    Date,
//	  event_time    DateTime,   -- DateTime64(3) on servers >= 20
//	  uuid          String,     -- canonical lower-case dashed
//	  first_seen    DateTime,   -- DateTime64(3) on servers >= 20
//	  is_new        UInt8,
//	  late          UInt8,
//	  src_partition Int32,
//	  src_offset    Int64,
//	  payload       String,
//	  kafka_time    DateTime,   -- DateTime64(3) on servers >= 20
//	  _epoch        UInt64      -- checkpoint epoch that wrote the row
//	) ENGINE = MergeTree
//	PARTITION BY toYYYYMM(event_date)
//	ORDER BY (event_date, uuid, event_time)
//
// An existing table is checked against this schema so that a mismatch is
// reported when the sink opens, not at the first write. Time columns may be
// DateTime (whole seconds: milliseconds are dropped) or DateTime64 (the
// milliseconds are kept), whatever the server version. Values outside the
// range of Date (1970-01-01 to 2149-06-06) and DateTime (1970 to 2106) are
// clamped to it, not wrapped around.
//
// [Sink.Write] sends a batch column by column as one INSERT per million rows
// and returns once the server acknowledged every INSERT. It never retries:
// the engine does, and [IsRetryable] tells it whether retrying can help.
//
// Plain MergeTree has no server-side deduplication on old servers, and one
// INSERT is atomic only within one table partition (month), so a failed
// write may have landed partly. The rows of an epoch are identified by
// (src_partition, src_offset, _epoch): a retried Write of the same batch
// inserts only the rows the failed one did not land. After a crash the
// engine replays the unfinished epoch and writes it with Batch.Retry set:
// the sink waits until no INSERT of that epoch still runs on the server
// (their query ids carry the table and epoch), reads which offsets of the
// epoch are already in the table, and inserts only the rest.
package clickhouse

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"hash/crc64"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/firstseen/firstseen/sinks"
)

// Config says where the sink writes. Zero fields take their defaults.
type Config struct {
	Addr        []string      // host:port of the native protocol, default ["localhost:9000"]
	Database    string        // default "default"; created when missing
	Table       string        // default "enriched_logs"; created when missing
	User        string        // default "default"
	Password    string        // never included in errors
	DialTimeout time.Duration // default 10s
}

func (c Config) withDefaults() Config {
	if len(c.Addr) == 0 {
		c.Addr = []string{"localhost:9000"}
	}
	if c.Database == "" {
		c.Database = "default"
	}
	if c.Table == "" {
		c.Table = "enriched_logs"
	}
	if c.User == "" {
		c.User = "default"
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 10 * time.Second
	}
	return c
}

// maxInsertRows is the most rows one INSERT carries; larger batches are
// split. A variable so that tests can exercise the split.
var maxInsertRows = 1_000_000

// columns are the inserted columns, in the order Write appends them.
var columns = [...]string{
	"event_date", "event_time", "uuid", "first_seen", "is_new", "late",
	"src_partition", "src_offset", "payload", "kafka_time", "_epoch",
}

// Sink writes batches to one ClickHouse table. Its methods are safe for
// concurrent use; writes are serialized.
type Sink struct {
	conn     driver.Conn
	where    string // "clickhouse host:port" prefix of every error
	password string
	table    string // quoted `db`.`table`
	insert   string
	version  string
	major    int

	// narrow marks the time columns of type DateTime (unsigned 32-bit
	// seconds), in the order event_time, first_seen, kafka_time.
	narrow [3]bool

	mu     sync.Mutex
	closed bool

	// Column buffers, reused between writes.
	dates      []time.Time
	eventTimes []time.Time
	firstSeens []time.Time
	kafkaTimes []time.Time
	uuidArena  []byte
	uuids      [][]byte
	isNew      []uint8
	late       []uint8
	payloads   [][]byte
	epochs     []uint64
	partitions []int32 // only for filtered rows
	offsets    []int64 // only for filtered rows
	keep       []int32 // rows of a retried batch that are not in the table

	// After a failed Write: its epoch and the query ids of its INSERTs.
	unsure      bool
	unsureEpoch uint64
}

// Open connects to ClickHouse, creates the database and the table when they
// are missing and checks the table's columns.
func Open(ctx context.Context, cfg Config) (*Sink, error) {
	cfg = cfg.withDefaults()
	s := &Sink{
		where:    "clickhouse " + strings.Join(cfg.Addr, ","),
		password: cfg.Password,
		table:    quoteIdent(cfg.Database) + "." + quoteIdent(cfg.Table),
	}
	s.insert = "INSERT INTO " + s.table + " (" + strings.Join(columns[:], ", ") + ")"

	conn, err := ch.Open(&ch.Options{
		Protocol: ch.Native,
		Addr:     cfg.Addr,
		// No database in the handshake: it may not exist yet. Every query
		// names the database.
		Auth:        ch.Auth{Username: cfg.User, Password: cfg.Password},
		DialTimeout: cfg.DialTimeout,
		Compression: &ch.Compression{Method: ch.CompressionLZ4},
	})
	if err != nil {
		return nil, s.wrap("invalid connection options", err)
	}
	s.conn = conn
	fail := func(op string, err error) (*Sink, error) {
		_ = conn.Close()
		return nil, s.wrap(op, err)
	}

	pingCtx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	err = conn.Ping(pingCtx)
	cancel()
	if err != nil {
		return fail("cannot connect", err)
	}
	if err := conn.QueryRow(ctx, "SELECT version()").Scan(&s.version); err != nil {
		return fail("cannot read the server version", err)
	}
	s.major = majorVersion(s.version)

	// Look before creating: a user allowed to insert may not be allowed to
	// run CREATE, even with IF NOT EXISTS.
	have, err := s.columnTypes(ctx, cfg.Database, cfg.Table)
	if err != nil {
		return fail("cannot read the columns of "+s.table, err)
	}
	if len(have) == 0 {
		if cfg.Database != "default" {
			var n uint64
			err := conn.QueryRow(ctx, "SELECT count() FROM system.databases WHERE name = "+
				quoteString(cfg.Database)).Scan(&n)
			if err == nil && n == 0 {
				err = conn.Exec(ctx, "CREATE DATABASE IF NOT EXISTS "+quoteIdent(cfg.Database))
			}
			if err != nil {
				return fail("cannot create database "+quoteIdent(cfg.Database), err)
			}
		}
		if err := conn.Exec(ctx, createTableSQL(s.table, s.major)); err != nil {
			return fail("cannot create table "+s.table, err)
		}
		if have, err = s.columnTypes(ctx, cfg.Database, cfg.Table); err != nil {
			return fail("cannot read the columns of "+s.table, err)
		}
	}
	if err := s.checkSchema(have); err != nil {
		_ = conn.Close()
		return nil, err
	}
	return s, nil
}

// createTableSQL is the table's DDL for a server of the given major version.
func createTableSQL(table string, major int) string {
	timeType := "DateTime"
	if major >= 20 {
		timeType = "DateTime64(3)"
	}
	return "CREATE TABLE IF NOT EXISTS " + table + ` (
  event_date    Date,
  event_time    ` + timeType + `,
  uuid          String,
  first_seen    ` + timeType + `,
  is_new        UInt8,
  late          UInt8,
  src_partition Int32,
  src_offset    Int64,
  payload       String,
  kafka_time    ` + timeType + `,
  _epoch        UInt64
) ENGINE = MergeTree
PARTITION BY toYYYYMM(event_date)
ORDER BY (event_date, uuid, event_time)` + tableSettings(major)
}

// Servers from 22.2 deduplicate an INSERT by insert_deduplication_token
// within non_replicated_deduplication_window on a plain MergeTree: a second
// line of defence behind the landed-rows check, which older servers need.
const dedupTokenMajor = 22

func tableSettings(major int) string {
	if major >= dedupTokenMajor {
		return "\nSETTINGS non_replicated_deduplication_window = 1000"
	}
	return ""
}

// dedupToken names an INSERT's exact content: the table, the epoch and the
// (partition, offset) of every row in it. A retry of the same rows gets the
// same token and is dropped by the server; a retry of only the rows that
// did not land is different content, so it gets another token.
func dedupToken(table string, epoch uint64, partitions []int32, offsets []int64) string {
	h := crc64.New(crc64.MakeTable(crc64.ECMA))
	var buf [12]byte
	for i := range offsets {
		binary.LittleEndian.PutUint32(buf[:4], uint32(partitions[i]))
		binary.LittleEndian.PutUint64(buf[4:], uint64(offsets[i]))
		h.Write(buf[:])
	}
	return fmt.Sprintf("firstseen-%08x-%d-%d-%016x", crc32.ChecksumIEEE([]byte(table)), epoch, len(offsets), h.Sum64())
}

// columnTypes returns the type of each column of the table; none when the
// table does not exist.
func (s *Sink) columnTypes(ctx context.Context, db, table string) (map[string]string, error) {
	rows, err := s.conn.Query(ctx, "SELECT name, type FROM system.columns WHERE database = "+
		quoteString(db)+" AND table = "+quoteString(table))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	have := make(map[string]string)
	for rows.Next() {
		var name, typ string
		if err := rows.Scan(&name, &typ); err != nil {
			return nil, err
		}
		have[name] = typ
	}
	return have, rows.Err()
}

// checkSchema verifies that the table's columns (have: name to type) are
// the columns the sink writes, with types the sink can write.
func (s *Sink) checkSchema(have map[string]string) error {
	s.narrow = [3]bool{!strings.HasPrefix(have["event_time"], "DateTime64"),
		!strings.HasPrefix(have["first_seen"], "DateTime64"), !strings.HasPrefix(have["kafka_time"], "DateTime64")}
	var problems []string
	for _, name := range columns {
		typ, ok := have[name]
		if !ok {
			problems = append(problems, "column "+name+" is missing")
			continue
		}
		if want := wantType(name); !typeOK(name, typ) {
			problems = append(problems, "column "+name+" is "+typ+", want "+want)
		}
	}
	if len(problems) > 0 {
		return &opError{where: s.where, op: "table " + s.table + " does not have the expected schema",
			err: &schemaError{problems: problems}}
	}
	return nil
}

func wantType(column string) string {
	switch column {
	case "event_date":
		return "Date"
	case "event_time", "first_seen", "kafka_time":
		return "DateTime or DateTime64"
	case "uuid", "payload":
		return "String"
	case "is_new", "late":
		return "UInt8"
	case "src_partition":
		return "Int32"
	case "src_offset":
		return "Int64"
	case "_epoch":
		return "UInt64"
	}
	return "?"
}

func typeOK(column, typ string) bool {
	switch column {
	case "event_time", "first_seen", "kafka_time":
		return typ == "DateTime" || strings.HasPrefix(typ, "DateTime(") || strings.HasPrefix(typ, "DateTime64(")
	}
	return typ == wantType(column)
}

// Write inserts every row of b and returns once the server acknowledged
// them. Batches of more than a million rows are sent as several INSERTs. An
// empty batch is a no-op.
//
// A failed Write may have landed in part: an INSERT commits month by month,
// and a lost acknowledgement hides a complete one. So after a failed Write,
// the next Write of the same epoch first waits until the server no longer
// runs the failed INSERTs, then asks which rows of the batch are in the
// table (as [Sink.Landed] does) and inserts only the others. Retrying a
// batch is thus safe; Write itself never retries.
func (s *Sink) Write(ctx context.Context, b *sinks.Batch) error {
	if b.Len() == 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return s.wrap("insert into "+s.table, errClosed)
	}
	filtered := false
	if b.Retry || (s.unsure && s.unsureEpoch == b.Epoch) {
		if err := s.selectNotLanded(ctx, b); err != nil {
			return s.wrap(fmt.Sprintf("cannot check which rows of epoch %d a failed insert left in %s",
				b.Epoch, s.table), err)
		}
		filtered = true
	}
	n := b.Len()
	if filtered {
		n = len(s.keep)
	}
	s.unsure, s.unsureEpoch = true, b.Epoch // until every INSERT succeeded
	for lo := 0; lo < n; lo += maxInsertRows {
		hi := min(lo+maxInsertRows, n)
		if err := s.insertRows(ctx, b, filtered, lo, hi); err != nil {
			if lo == 0 && hi == n {
				return s.wrap(fmt.Sprintf("insert of %d row(s) into %s", n, s.table), err)
			}
			return s.wrap(fmt.Sprintf("insert of rows %d-%d of %d into %s", lo, hi-1, n, s.table), err)
		}
	}
	s.unsure = false
	return nil
}

// insertRows sends rows [lo, hi) of b (of s.keep when filtered) as one
// INSERT.
func (s *Sink) insertRows(ctx context.Context, b *sinks.Batch, filtered bool, lo, hi int) (err error) {
	s.fill(b, filtered, lo, hi)
	defer s.clearRefs()

	id := s.queryIDPrefix(b.Epoch) + fmt.Sprintf("%016x", rand.Uint64())
	partitions, offsets := s.partitions, s.offsets
	if !filtered {
		partitions, offsets = b.Partition[lo:hi], b.Offset[lo:hi]
	}
	opts := []ch.QueryOption{ch.WithQueryID(id)}
	if s.major >= dedupTokenMajor {
		opts = append(opts, ch.WithSettings(ch.Settings{
			"insert_deduplication_token": dedupToken(s.table, b.Epoch, partitions, offsets)}))
	}
	batch, err := s.conn.PrepareBatch(ch.Context(ctx, opts...), s.insert)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil && !batch.IsSent() {
			_ = batch.Abort()
		}
	}()
	values := [len(columns)]any{
		s.dates, s.eventTimes, s.uuids, s.firstSeens, s.isNew, s.late,
		partitions, offsets, s.payloads, s.kafkaTimes, s.epochs,
	}
	for i, v := range values {
		if err := batch.Column(i).Append(v); err != nil {
			return fmt.Errorf("column %s: %w", columns[i], err)
		}
	}
	return batch.Send()
}

// fill converts rows [lo, hi) of b, or the rows s.keep[lo:hi] when
// filtered, into the sink's column buffers.
func (s *Sink) fill(b *sinks.Batch, filtered bool, lo, hi int) {
	n := hi - lo
	s.dates = resize(s.dates, n)
	s.eventTimes = resize(s.eventTimes, n)
	s.firstSeens = resize(s.firstSeens, n)
	s.kafkaTimes = resize(s.kafkaTimes, n)
	s.uuids = resize(s.uuids, n)
	s.isNew = resize(s.isNew, n)
	s.late = resize(s.late, n)
	s.payloads = resize(s.payloads, n)
	s.epochs = resize(s.epochs, n)
	s.uuidArena = resize(s.uuidArena, 36*n)
	if filtered {
		s.partitions = resize(s.partitions, n)
		s.offsets = resize(s.offsets, n)
	}
	for i := range n {
		r := lo + i
		if filtered {
			r = int(s.keep[r])
			s.partitions[i] = b.Partition[r]
			s.offsets[i] = b.Offset[r]
		}
		s.dates[i] = dateOf(b.EventDate[r])
		s.eventTimes[i] = timeOf(b.EventTime[r], s.narrow[0])
		s.firstSeens[i] = timeOf(b.FirstSeen[r], s.narrow[1])
		s.kafkaTimes[i] = timeOf(b.Timestamp[r], s.narrow[2])
		u := s.uuidArena[36*i : 36*i : 36*(i+1)]
		s.uuids[i] = b.UUID[r].AppendCanonical(u)
		s.isNew[i] = boolByte(b.IsNew[r])
		s.late[i] = boolByte(b.Late[r])
		s.payloads[i] = b.Payload(r)
		s.epochs[i] = b.Epoch
	}
}

// insertWait is how long a retried Write waits for the failed INSERTs to
// end on the server.
var insertWait = 30 * time.Second

// errInsertRunning says a failed INSERT still runs on the server.
var errInsertRunning = errors.New("the failed insert is still running on the server")

// selectNotLanded waits until the server no longer runs the INSERTs of the
// failed Write and sets s.keep to the rows of b that are not in the table.
func (s *Sink) selectNotLanded(ctx context.Context, b *sinks.Batch) error {
	// An INSERT of this epoch may still be running: one this process gave up
	// on, or one a crashed process had fully sent. Its query id tells.
	q := "SELECT count() FROM system.processes WHERE query_id LIKE " + quoteString(s.queryIDPrefix(b.Epoch)+"%")
	deadline := time.Now().Add(insertWait)
	for {
		var running uint64
		if err := s.conn.QueryRow(ctx, q).Scan(&running); err != nil {
			return err
		}
		if running == 0 {
			break
		}
		if time.Now().After(deadline) {
			return errInsertRunning
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	dates := make(map[int32]map[int32]struct{}) // partition -> event dates
	for i := range b.Len() {
		p := b.Partition[i]
		if dates[p] == nil {
			dates[p] = make(map[int32]struct{})
		}
		dates[p][b.EventDate[i]] = struct{}{}
	}
	landed := make(map[int32]map[int64]struct{}, len(dates))
	for p, ds := range dates {
		l, err := s.landed(ctx, p, b.Epoch, slices.Collect(maps.Keys(ds)))
		if err != nil {
			return err
		}
		landed[p] = l
	}
	s.keep = s.keep[:0]
	for i := range b.Len() {
		if _, ok := landed[b.Partition[i]][b.Offset[i]]; !ok {
			s.keep = append(s.keep, int32(i))
		}
	}
	return nil
}

// clearRefs drops the references to the batch's payload memory.
func (s *Sink) clearRefs() { clear(s.payloads) }

// Landed returns the src_offset values of the rows already in the table for
// src_partition = partition and _epoch = epoch, restricted to the given
// event dates (days since 1970-01-01) when dates is not empty.
func (s *Sink) Landed(ctx context.Context, partition int32, epoch uint64, dates []int32) (map[int64]struct{}, error) {
	landed, err := s.landed(ctx, partition, epoch, dates)
	if err != nil {
		return nil, s.wrap(fmt.Sprintf("cannot read landed offsets of partition %d epoch %d from %s",
			partition, epoch, s.table), err)
	}
	return landed, nil
}

func (s *Sink) landed(ctx context.Context, partition int32, epoch uint64, dates []int32) (map[int64]struct{}, error) {
	var q strings.Builder
	q.WriteString("SELECT src_offset FROM ")
	q.WriteString(s.table)
	q.WriteString(" WHERE src_partition = ")
	q.WriteString(strconv.FormatInt(int64(partition), 10))
	q.WriteString(" AND _epoch = ")
	q.WriteString(strconv.FormatUint(epoch, 10))
	if len(dates) > 0 {
		days := slices.Clone(dates)
		slices.Sort(days)
		days = slices.Compact(days)
		q.WriteString(" AND event_date IN (")
		for i, d := range days {
			if i > 0 {
				q.WriteString(", ")
			}
			q.WriteString(time.Unix(int64(d)*86400, 0).UTC().Format("'2006-01-02'"))
		}
		q.WriteString(")")
	}
	rows, err := s.conn.Query(ctx, q.String())
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	landed := make(map[int64]struct{})
	for rows.Next() {
		var off int64
		if err := rows.Scan(&off); err != nil {
			return nil, err
		}
		landed[off] = struct{}{}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return landed, nil
}

// Close closes the connections. It is safe to call more than once.
func (s *Sink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.dates, s.eventTimes, s.firstSeens, s.kafkaTimes = nil, nil, nil, nil
	s.uuidArena, s.uuids, s.isNew, s.late, s.payloads, s.epochs = nil, nil, nil, nil, nil, nil
	s.partitions, s.offsets, s.keep = nil, nil, nil
	if err := s.conn.Close(); err != nil {
		return s.wrap("close", err)
	}
	return nil
}

// ServerVersion is the server's version as SELECT version() reports it,
// e.g. "18.16.1".
func (s *Sink) ServerVersion() string { return s.version }

// Table is the quoted `db`.`table` name the sink uses in queries.
func (s *Sink) Table() string { return s.table }

// Conn is the sink's connection pool, for queries by tests, the demo and
// recovery. It is closed by [Sink.Close].
func (s *Sink) Conn() driver.Conn { return s.conn }

var _ sinks.Sink = (*Sink)(nil)

var errClosed = errors.New("sink is closed")

// majorVersion parses the leading number of a version string; 0 if none.
func majorVersion(v string) int {
	end := strings.IndexByte(v, '.')
	if end < 0 {
		end = len(v)
	}
	n, err := strconv.Atoi(v[:end])
	if err != nil {
		return 0
	}
	return n
}

// quoteIdent quotes a database or table name for a query.
func quoteIdent(name string) string {
	return "`" + strings.NewReplacer("\\", "\\\\", "`", "\\`").Replace(name) + "`"
}

// quoteString quotes a string literal for a query.
func quoteString(v string) string {
	return "'" + strings.NewReplacer("\\", "\\\\", "'", "\\'").Replace(v) + "'"
}

// dateOf is the value for a Date column of day d (days since 1970-01-01).
// Midnight UTC: the driver takes the day number from the time's own zone.
// Date is an unsigned 16-bit day number: days outside 1970-01-01 to
// 2149-06-06 are clamped rather than left to wrap around.
func dateOf(d int32) time.Time {
	return time.Unix(int64(min(max(d, 0), math.MaxUint16))*86400, 0).UTC()
}

// timeOf is the value for a time column of epoch milliseconds ms. A
// DateTime64(3) column keeps the milliseconds, a DateTime column (narrow)
// whole seconds, as an unsigned 32-bit number: times outside 1970 to
// 2106-02-07 are clamped rather than left to wrap around.
func timeOf(ms int64, narrow bool) time.Time {
	if narrow {
		ms = min(max(ms, 0), math.MaxUint32*1000)
	}
	return time.UnixMilli(ms).UTC()
}

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// resize returns s with length n, reusing its memory when it is large enough.
func resize[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n, n+n/4)
	}
	return s[:n]
}

// queryIDPrefix starts the query id of every INSERT of an epoch into this
// table, so that a later Write of the epoch can wait for them to finish.
func (s *Sink) queryIDPrefix(epoch uint64) string {
	return fmt.Sprintf("firstseen-%08x-%d-", crc32.ChecksumIEEE([]byte(s.table)), epoch)
}

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
// [Sink.Write] sends a batch as one INSERT per million rows, streamed in
// blocks of at most 8Ki rows (and about 4 MiB of payload), so that the
// memory the sink and the driver hold is a block's, whatever the size of the
// batch; the server still joins the blocks of an INSERT into parts of up to
// a million rows (min_insert_block_size_rows). It returns once the server
// acknowledged every INSERT. It never retries: the engine does, and
// [IsRetryable] tells it whether retrying can help.
//
// Plain MergeTree has no server-side deduplication on old servers, and one
// INSERT is atomic only within one table partition (month), so a failed
// write may have landed partly. The rows of an epoch are identified by
// (src_partition, src_offset): a retried Write of the same batch inserts
// only the rows the failed one did not land. After a crash the engine
// replays the unfinished epoch and writes it with Batch.Retry set, naming
// the attempts that may have landed rows (Batch.Unsure; possibly another
// replica's): the sink waits until no INSERT of those attempts still runs
// on the server (their query ids carry the table, the writer and the
// epoch), reads which offsets of the batch's partitions are already in the
// table, and inserts only the rest.
package clickhouse

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"hash/crc64"
	"maps"
	"math"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/firstseen/firstseen/internal/tlserr"
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
	Compression Compression   // of the rows sent; default CompressionLZ4
	// TLS, when set, connects with TLS (the server's secure native port,
	// usually 9440). An empty ServerName is the host of the address.
	TLS *tls.Config
}

// Compression is how the rows of an INSERT are compressed on the wire. It
// is a flag value (it implements pflag.Value).
type Compression string

const (
	// CompressionLZ4 sends fewer bytes for some CPU: the right choice when
	// ClickHouse is across a network.
	CompressionLZ4 Compression = "lz4"
	// CompressionNone saves that CPU (LZ4 is most of the sink's work) when
	// ClickHouse is on the same host or behind a fast, uncontended link.
	CompressionNone Compression = "none"
)

func (c Compression) String() string { return string(c) }

// Set implements pflag.Value: it takes lz4 or none.
func (c *Compression) Set(v string) error {
	switch Compression(strings.ToLower(v)) {
	case CompressionLZ4, "":
		*c = CompressionLZ4
	case CompressionNone:
		*c = CompressionNone
	default:
		return fmt.Errorf("%q: want lz4 or none", v)
	}
	return nil
}

// Type implements pflag.Value.
func (c *Compression) Type() string { return "lz4|none" }

func (c Compression) option() (*ch.Compression, error) {
	switch c {
	case CompressionLZ4:
		return &ch.Compression{Method: ch.CompressionLZ4}, nil
	case CompressionNone:
		return nil, nil
	}
	return nil, fmt.Errorf("compression %q: want lz4 or none", string(c))
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
	if c.Compression == "" {
		c.Compression = CompressionLZ4
	}
	return c
}

// maxInsertRows is the most rows one INSERT carries; larger batches are
// split. An INSERT streams its rows in blocks of at most blockRows rows and
// about blockBytes of payload. The driver builds its columns afresh for
// every INSERT and reuses them from block to block, so small blocks keep
// what each INSERT allocates (and the CPU that costs) small; the server
// joins them into parts anyway. Variables so that tests can exercise the
// splits.
var (
	maxInsertRows = 1_000_000
	blockRows     = 8 << 10
	blockBytes    = 4 << 20
)

// columns are the inserted columns, in the order Write appends them.
var columns = [...]string{
	"event_date", "event_time", "uuid", "first_seen", "is_new", "late",
	"src_partition", "src_offset", "payload", "kafka_time", "_epoch",
}

// Sink writes batches to one ClickHouse table. Its methods are safe for
// concurrent use; writes are serialized.
type Sink struct {
	conn driver.Conn // for queries
	// INSERTs have a pool of their own, of one connection (insNet), so
	// that a cancelled Write can close the connection its INSERT streams
	// on: the driver watches the context only while it sends the last
	// block.
	ins      driver.Conn
	insNet   atomic.Pointer[net.Conn]
	where    string // "clickhouse host:port" prefix of every error
	user     string
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

	block block   // reused from block to block and between writes
	runs  []run   // the rows a Write inserts
	keep  []int32 // rows of a retried batch that are not in the table

	// After a failed Write: its epoch and the query ids of its INSERTs.
	unsure       bool
	unsureEpoch  uint64
	unsureWriter string
}

// Open connects to ClickHouse, creates the database and the table when they
// are missing and checks the table's columns.
func Open(ctx context.Context, cfg Config) (*Sink, error) {
	cfg = cfg.withDefaults()
	s := &Sink{
		where:    "clickhouse " + strings.Join(cfg.Addr, ","),
		user:     cfg.User,
		password: cfg.Password,
		table:    quoteIdent(cfg.Database) + "." + quoteIdent(cfg.Table),
	}
	s.insert = "INSERT INTO " + s.table + " (" + strings.Join(columns[:], ", ") + ")"

	compression, err := cfg.Compression.option()
	if err != nil {
		return nil, s.wrap("invalid connection options", err)
	}
	opts := ch.Options{
		Protocol: ch.Native,
		Addr:     cfg.Addr,
		// No database in the handshake: it may not exist yet. Every query
		// names the database.
		Auth:        ch.Auth{Username: cfg.User, Password: cfg.Password},
		DialTimeout: cfg.DialTimeout,
		Compression: compression,
		TLS:         cfg.TLS,
	}
	conn, err := ch.Open(&opts)
	if err != nil {
		return nil, s.wrap("invalid connection options", err)
	}
	s.conn = conn
	dialer := net.Dialer{Timeout: cfg.DialTimeout}
	opts.MaxOpenConns, opts.MaxIdleConns = 1, 1
	opts.DialContext = func(ctx context.Context, addr string) (net.Conn, error) {
		c, err := dialer.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		// The plain connection, whose Close ends the INSERT at once.
		s.insNet.Store(&c)
		if cfg.TLS == nil {
			return c, nil
		}
		return clientTLS(ctx, c, addr, cfg.TLS)
	}
	if s.ins, err = ch.Open(&opts); err != nil {
		_ = conn.Close()
		return nil, s.wrap("invalid connection options", err)
	}
	fail := func(op string, err error) (*Sink, error) {
		_ = conn.Close()
		_ = s.ins.Close()
		return nil, s.wrap(op, err)
	}

	pingCtx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	err = conn.Ping(pingCtx)
	cancel()
	if err != nil {
		if reason := authFailure(err); reason != "" {
			_ = conn.Close()
			_ = s.ins.Close()
			return nil, &authError{where: s.where, user: cfg.User, reason: reason, err: err, password: cfg.Password}
		}
		if tlserr.Is(err) {
			return fail("TLS handshake failed", err)
		}
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
		_ = s.ins.Close()
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
	h := newTokenHash()
	for i := range offsets {
		h.add(partitions[i], offsets[i])
	}
	return h.token(table, epoch)
}

// tokenHash computes a dedupToken row by row.
type tokenHash struct {
	h   hash.Hash64
	n   int
	buf [12]byte
}

func newTokenHash() *tokenHash { return &tokenHash{h: crc64.New(crc64.MakeTable(crc64.ECMA))} }

func (t *tokenHash) add(partition int32, offset int64) {
	binary.LittleEndian.PutUint32(t.buf[:4], uint32(partition))
	binary.LittleEndian.PutUint64(t.buf[4:], uint64(offset))
	t.h.Write(t.buf[:])
	t.n++
}

func (t *tokenHash) token(table string, epoch uint64) string {
	return fmt.Sprintf("firstseen-%08x-%d-%d-%016x", crc32.ChecksumIEEE([]byte(table)), epoch, t.n, t.h.Sum64())
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
	defer s.release()
	s.runs = s.runs[:0]
	if b.Retry || (s.unsure && s.unsureEpoch == b.Epoch && s.unsureWriter == b.Writer) {
		if err := s.selectNotLanded(ctx, b); err != nil {
			return s.wrap(fmt.Sprintf("cannot check which rows of epoch %d a failed insert left in %s",
				b.Epoch, s.table), err)
		}
	} else {
		for _, p := range b.Parts() {
			s.runs = append(s.runs, run{b: p, lo: 0, hi: p.Len()})
		}
	}
	n := 0
	for _, r := range s.runs {
		n += r.len()
	}
	s.unsure, s.unsureEpoch, s.unsureWriter = true, b.Epoch, b.Writer // until every INSERT succeeded
	for lo := 0; lo < n; lo += maxInsertRows {
		hi := min(lo+maxInsertRows, n)
		if err := s.insertRows(ctx, b.Writer, b.Epoch, lo, hi); err != nil {
			if lo == 0 && hi == n {
				return s.wrap(fmt.Sprintf("insert of %d row(s) into %s", n, s.table), err)
			}
			return s.wrap(fmt.Sprintf("insert of rows %d-%d of %d into %s", lo, hi-1, n, s.table), err)
		}
	}
	s.unsure = false
	return nil
}

// run is rows of one part of a batch (not a joined one): rows lo to hi-1,
// or, when keep is set, the rows keep[lo:hi].
type run struct {
	b      *sinks.Batch
	keep   []int32
	lo, hi int
}

func (r run) len() int { return r.hi - r.lo }

func (r run) row(i int) int {
	if r.keep != nil {
		return int(r.keep[i])
	}
	return i
}

// insertRows sends rows [lo, hi) of s.runs, which hold rows of epoch, as one
// INSERT, streamed in blocks.
func (s *Sink) insertRows(ctx context.Context, writer string, epoch uint64, lo, hi int) (err error) {
	id := s.queryIDPrefix(writer, epoch) + fmt.Sprintf("%016x", rand.Uint64())
	opts := []ch.QueryOption{ch.WithQueryID(id)}
	if s.major >= dedupTokenMajor {
		h := newTokenHash()
		s.eachRun(lo, hi, func(r run) {
			for i := r.lo; i < r.hi; i++ {
				j := r.row(i)
				h.add(r.b.Partition[j], r.b.Offset[j])
			}
		})
		opts = append(opts, ch.WithSettings(ch.Settings{"insert_deduplication_token": h.token(s.table, epoch)}))
	}
	batch, err := s.ins.PrepareBatch(ch.Context(ctx, opts...), s.insert)
	if err != nil {
		return err
	}
	// Close the connection if ctx ends while a block is being sent; the
	// driver then drops it.
	stop := context.AfterFunc(ctx, func() {
		if c := s.insNet.Load(); c != nil {
			_ = (*c).Close()
		}
	})
	defer func() {
		stop()
		if err != nil && !batch.IsSent() {
			_ = batch.Abort()
		}
		if err != nil && ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
	}()

	k := &s.block
	k.reset()
	flush := func() error {
		for i, v := range k.values() {
			if err := batch.Column(i).Append(v); err != nil {
				return fmt.Errorf("column %s: %w", columns[i], err)
			}
		}
		k.reset()
		return nil
	}
	s.eachRun(lo, hi, func(r run) {
		for i := r.lo; i < r.hi && err == nil; i++ {
			k.add(r.b, r.row(i), epoch, s.narrow)
			if k.full() {
				if err = flush(); err == nil {
					err = batch.Flush()
				}
			}
		}
	})
	if err != nil {
		return err
	}
	if err := flush(); err != nil {
		return err
	}
	return batch.Send()
}

// eachRun calls f with the runs that hold rows [lo, hi) of s.runs, cut to
// those rows.
func (s *Sink) eachRun(lo, hi int, f func(r run)) {
	at := 0 // index in s.runs of the first row of r
	for _, r := range s.runs {
		n := r.len()
		if at+n > lo && at < hi {
			cut := r
			cut.lo = r.lo + max(lo-at, 0)
			cut.hi = r.lo + min(hi-at, n)
			f(cut)
		}
		at += n
	}
}

// release lets go of the batch's memory after a Write, and of a retry's
// list of rows if it is large.
func (s *Sink) release() {
	s.block.reset()
	clear(s.runs)
	s.runs = s.runs[:0]
	if cap(s.keep) > blockRows {
		s.keep = nil
	}
}

// block is the rows of one block of an INSERT, column by column, in types
// the driver appends to its columns without allocating. Its memory is
// allocated once, for blockRows rows, and reused from block to block.
type block struct {
	n          int // rows
	bytes      int // of payload
	dates      []time.Time
	eventTimes []int64 // epoch seconds (DateTime) or milliseconds (DateTime64)
	firstSeens []int64
	kafkaTimes []int64
	uuidArena  []byte
	uuids      []string // in uuidArena
	isNew      []uint8
	late       []uint8
	partitions []int32
	offsets    []int64
	payloads   []string // in the batch's memory
	epochs     []uint64
}

// add appends row i of b. narrow marks the time columns of type DateTime
// (event_time, first_seen, kafka_time).
func (k *block) add(b *sinks.Batch, i int, epoch uint64, narrow [3]bool) {
	if len(k.dates) != blockRows {
		k.alloc()
	}
	j := k.n
	k.n++
	k.dates[j] = dateOf(b.EventDate[i])
	k.eventTimes[j] = timeValue(b.EventTime[i], narrow[0])
	k.firstSeens[j] = timeValue(b.FirstSeen[i], narrow[1])
	k.kafkaTimes[j] = timeValue(b.Timestamp[i], narrow[2])
	u := b.UUID[i].AppendCanonical(k.uuidArena[36*j : 36*j : 36*(j+1)])
	k.uuids[j] = unsafeString(u)
	k.isNew[j] = boolByte(b.IsNew[i])
	k.late[j] = boolByte(b.Late[i])
	k.partitions[j] = b.Partition[i]
	k.offsets[j] = b.Offset[i]
	p := b.Payload(i)
	k.payloads[j] = unsafeString(p)
	k.bytes += len(p)
	k.epochs[j] = epoch
}

func (k *block) alloc() {
	n := blockRows
	*k = block{dates: make([]time.Time, n), eventTimes: make([]int64, n), firstSeens: make([]int64, n),
		kafkaTimes: make([]int64, n), uuidArena: make([]byte, 36*n), uuids: make([]string, n),
		isNew: make([]uint8, n), late: make([]uint8, n), partitions: make([]int32, n), offsets: make([]int64, n),
		payloads: make([]string, n), epochs: make([]uint64, n)}
}

// unsafeString is b as a string, without a copy. The block's strings alias
// the batch's payloads and the block's uuid arena, which do not change
// while the driver copies the strings into its columns, and the block drops
// them when it is reset; a copy per value would allocate twice per row.
func unsafeString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// full says whether the block is as large as a block gets.
func (k *block) full() bool { return k.n >= blockRows || k.bytes >= blockBytes }

// values are the block's columns, in the order of columns.
func (k *block) values() [len(columns)]any {
	n := k.n
	return [len(columns)]any{
		k.dates[:n], k.eventTimes[:n], k.uuids[:n], k.firstSeens[:n], k.isNew[:n], k.late[:n],
		k.partitions[:n], k.offsets[:n], k.payloads[:n], k.kafkaTimes[:n], k.epochs[:n],
	}
}

// reset empties the block, and drops its references to the batch's memory.
func (k *block) reset() {
	clear(k.payloads[:k.n])
	clear(k.uuids[:k.n])
	k.n, k.bytes = 0, 0
}

// insertWait is how long a retried Write waits for the failed INSERTs to
// end on the server.
var insertWait = 30 * time.Second

// errInsertRunning says a failed INSERT still runs on the server.
var errInsertRunning = errors.New("the failed insert is still running on the server")

// selectNotLanded waits until the server no longer runs the INSERTs of the
// failed Write and sets s.runs to the rows of b that are not in the table.
func (s *Sink) selectNotLanded(ctx context.Context, b *sinks.Batch) error {
	// An INSERT of this batch may still be running: one this process gave
	// up on, or one a crashed process had fully sent. Its query id tells.
	var q strings.Builder
	q.WriteString("SELECT count() FROM system.processes WHERE query_id LIKE ")
	q.WriteString(quoteString(s.queryIDPrefix(b.Writer, b.Epoch) + "%"))
	for _, a := range b.Unsure {
		q.WriteString(" OR query_id LIKE ")
		q.WriteString(quoteString(s.queryIDPrefix(a.Writer, a.Epoch) + "%"))
	}
	deadline := time.Now().Add(insertWait)
	for {
		var running uint64
		if err := s.conn.QueryRow(ctx, q.String()).Scan(&running); err != nil {
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
	parts := b.Parts()
	type span struct {
		dates  map[int32]struct{}
		lo, hi int64 // offsets
	}
	spans := make(map[int32]*span) // partition -> its rows' dates and offsets
	for _, b := range parts {
		for i, p := range b.Partition {
			sp := spans[p]
			if sp == nil {
				sp = &span{dates: make(map[int32]struct{}), lo: b.Offset[i], hi: b.Offset[i]}
				spans[p] = sp
			}
			sp.dates[b.EventDate[i]] = struct{}{}
			sp.lo, sp.hi = min(sp.lo, b.Offset[i]), max(sp.hi, b.Offset[i])
		}
	}
	landed := make(map[int32]map[int64]struct{}, len(spans))
	for p, sp := range spans {
		l, err := s.landedOffsets(ctx, p, sp.lo, sp.hi, slices.Collect(maps.Keys(sp.dates)))
		if err != nil {
			return err
		}
		landed[p] = l
	}
	s.keep = s.keep[:0]
	for _, b := range parts {
		at := len(s.keep)
		for i, p := range b.Partition {
			if _, ok := landed[p][b.Offset[i]]; !ok {
				s.keep = append(s.keep, int32(i))
			}
		}
		s.runs = append(s.runs, run{b: b, keep: s.keep[at:len(s.keep):len(s.keep)], lo: 0, hi: len(s.keep) - at})
	}
	return nil
}

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
	return s.selectOffsets(ctx, partition, " AND _epoch = "+strconv.FormatUint(epoch, 10), dates)
}

// landedOffsets returns the src_offset values between lo and hi (inclusive)
// already in the table for src_partition = partition, restricted to the
// given event dates. A row is identified by its source partition and
// offset, whoever wrote it.
func (s *Sink) landedOffsets(ctx context.Context, partition int32, lo, hi int64, dates []int32) (map[int64]struct{}, error) {
	return s.selectOffsets(ctx, partition, fmt.Sprintf(" AND src_offset BETWEEN %d AND %d", lo, hi), dates)
}

func (s *Sink) selectOffsets(ctx context.Context, partition int32, cond string, dates []int32) (map[int64]struct{}, error) {
	var q strings.Builder
	q.WriteString("SELECT src_offset FROM ")
	q.WriteString(s.table)
	q.WriteString(" WHERE src_partition = ")
	q.WriteString(strconv.FormatInt(int64(partition), 10))
	q.WriteString(cond)
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
	s.block, s.runs, s.keep = block{}, nil, nil
	if err := errors.Join(s.ins.Close(), s.conn.Close()); err != nil {
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

// timeValue is the value for a time column of epoch milliseconds ms, as the
// driver takes it: for DateTime64 the milliseconds, for a DateTime column
// (narrow) whole seconds, an unsigned 32-bit number: times outside 1970 to
// 2106-02-07 are clamped rather than left to wrap around.
func timeValue(ms int64, narrow bool) int64 {
	if narrow {
		return min(max(ms, 0), math.MaxUint32*1000) / 1000
	}
	return ms
}

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// queryIDPrefix starts the query id of every INSERT of an epoch into this
// table, so that a later Write of the epoch can wait for them to finish.
func (s *Sink) queryIDPrefix(writer string, epoch uint64) string {
	return fmt.Sprintf("firstseen-%08x-%s-%d-", crc32.ChecksumIEEE([]byte(s.table)), queryIDSafe(writer), epoch)
}

// queryIDSafe keeps letters, digits, '.' and '-' of a writer's name (a pod
// name is made of these), so that it is literal in a LIKE pattern.
func queryIDSafe(w string) string {
	return strings.Map(func(r rune) rune {
		if r == '.' || r == '-' || (r >= '0' && r <= '9') || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') {
			return r
		}
		return 'x'
	}, w)
}

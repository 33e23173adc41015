package clickhouse

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"

	"github.com/firstseen/firstseen/operators"
	"github.com/firstseen/firstseen/sinks"
	"github.com/firstseen/firstseen/sinks/clickhouse/chtest"
)

func openSink(t *testing.T, cfg Config) *Sink {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Open(ctx, cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func day(y int, m time.Month, d int) int32 {
	return int32(time.Date(y, m, d, 0, 0, 0, 0, time.UTC).Unix() / 86400)
}

var payloads = []string{
	`{}`,
	`{"a":1}`,
	`{"msg":"she said \"hi\" and left","path":"C:\\temp\\x"}`,
	`{"text":"naïve café – 日本語 – 🙂","q":"it's"}`,
	`{"nested":{"list":[1,2.5,"x",null,true]},"tab":"a\tb","nl":"a\nb"}`,
	`{"sql":"'; DROP TABLE x; --","back":"` + "`" + `"}`,
}

// randomRow fills r with a random row of event date d; off is its offset.
func randomRow(rng *rand.Rand, r *operators.Row, d int32, part int32, off int64) {
	hex := "0123456789ABCDEF"
	var s [36]byte
	for i := range s {
		switch i {
		case 8, 13, 18, 23:
			s[i] = '-'
		default:
			s[i] = hex[rng.IntN(16)]
		}
	}
	u, ok := operators.ParseUUID(s[:])
	if !ok {
		panic("bad uuid " + string(s[:]))
	}
	t := int64(d)*86_400_000 + rng.Int64N(86_400_000)
	*r = operators.Row{
		UUID:      u,
		EventTime: t,
		EventDate: d,
		FirstSeen: t - rng.Int64N(40*86_400_000),
		IsNew:     rng.IntN(2) == 0,
		Late:      rng.IntN(5) == 0,
		Partition: part,
		Offset:    off,
		Timestamp: t + rng.Int64N(60_000),
		Payload:   []byte(payloads[rng.IntN(len(payloads))]),
	}
}

type stored struct {
	EventDate time.Time
	EventTime time.Time
	UUID      string
	FirstSeen time.Time
	IsNew     uint8
	Late      uint8
	Partition int32
	Offset    int64
	Payload   string
	KafkaTime time.Time
	Epoch     uint64
}

func readAll(t *testing.T, s *Sink) []stored {
	t.Helper()
	rows, err := s.Conn().Query(context.Background(), "SELECT "+strings.Join(columns[:], ", ")+
		" FROM "+s.Table()+" ORDER BY _epoch, src_partition, src_offset")
	if err != nil {
		t.Fatalf("select: %v", err)
	}
	defer rows.Close()
	var out []stored
	for rows.Next() {
		var r stored
		if err := rows.Scan(&r.EventDate, &r.EventTime, &r.UUID, &r.FirstSeen, &r.IsNew, &r.Late,
			&r.Partition, &r.Offset, &r.Payload, &r.KafkaTime, &r.Epoch); err != nil {
			t.Fatalf("scan: %v", err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("rows: %v", err)
	}
	return out
}

// checkRow compares a stored row with the row that was written.
func checkRow(t *testing.T, s *Sink, got stored, want *operators.Row, epoch uint64) {
	t.Helper()
	// DateTime keeps seconds, DateTime64(3) milliseconds.
	ms := func(v int64) int64 {
		if s.major >= 20 {
			return v
		}
		return v - v%1000
	}
	wantDate := time.Unix(int64(want.EventDate)*86400, 0).UTC().Format(time.DateOnly)
	errs := []string{}
	check := func(name string, got, want any) {
		if got != want {
			errs = append(errs, fmt.Sprintf("%s = %v, want %v", name, got, want))
		}
	}
	check("event_date", got.EventDate.Format(time.DateOnly), wantDate)
	check("event_time", got.EventTime.UnixMilli(), ms(want.EventTime))
	check("uuid", got.UUID, want.UUID.String())
	check("first_seen", got.FirstSeen.UnixMilli(), ms(want.FirstSeen))
	check("is_new", got.IsNew, boolByte(want.IsNew))
	check("late", got.Late, boolByte(want.Late))
	check("src_partition", got.Partition, want.Partition)
	check("src_offset", got.Offset, want.Offset)
	check("payload", got.Payload, string(want.Payload))
	check("kafka_time", got.KafkaTime.UnixMilli(), ms(want.Timestamp))
	check("_epoch", got.Epoch, epoch)
	if len(errs) > 0 {
		t.Errorf("row partition %d offset %d: %s", want.Partition, want.Offset, strings.Join(errs, "; "))
	}
}

func TestOpenIsIdempotent(t *testing.T) {
	addr := chtest.Addr(t)
	db := chtest.FreshDatabase(t, addr)
	cfg := Config{Addr: []string{addr}, Database: db}
	s1 := openSink(t, cfg)
	s2 := openSink(t, cfg)
	// The DDL itself is idempotent too.
	if err := s1.Conn().Exec(context.Background(), createTableSQL(s1.Table(), s1.major)); err != nil {
		t.Fatalf("CREATE TABLE IF NOT EXISTS of an existing table: %v", err)
	}
	t.Logf("server version %s", s1.ServerVersion())
	if s1.ServerVersion() == "" || s1.major == 0 {
		t.Errorf("ServerVersion() = %q, major %d", s1.ServerVersion(), s1.major)
	}
	if want := "`" + db + "`.`enriched_logs`"; s2.Table() != want {
		t.Errorf("Table() = %q, want %q", s2.Table(), want)
	}
	var n uint64
	if err := s1.Conn().QueryRow(context.Background(),
		"SELECT count() FROM system.tables WHERE database = '"+db+"' AND name = 'enriched_logs'").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Fatalf("%d tables, want 1", n)
	}
	timeType := "DateTime"
	if s1.major >= 20 {
		timeType = "DateTime64(3)"
	}
	want := map[string]string{
		"event_date": "Date", "event_time": timeType, "uuid": "String", "first_seen": timeType,
		"is_new": "UInt8", "late": "UInt8", "src_partition": "Int32", "src_offset": "Int64",
		"payload": "String", "kafka_time": timeType, "_epoch": "UInt64",
	}
	rows, err := s1.Conn().Query(context.Background(),
		"SELECT name, type FROM system.columns WHERE database = '"+db+"' AND table = 'enriched_logs'")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	got := map[string]string{}
	for rows.Next() {
		var name, typ string
		if err := rows.Scan(&name, &typ); err != nil {
			t.Fatal(err)
		}
		got[name] = typ
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("columns = %v, want %v", got, want)
	}
	if err := s1.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := s1.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	var b sinks.Batch
	var r operators.Row
	randomRow(rand.New(rand.NewPCG(1, 1)), &r, day(2024, 1, 1), 0, 0)
	b.Append(&r)
	if err := s1.Write(context.Background(), &b); err == nil || IsRetryable(err) {
		t.Errorf("Write after Close = %v, want a non-retryable error", err)
	}
}

func TestOpenDefaultDatabase(t *testing.T) {
	addr := chtest.Addr(t)
	table := "fs_test_" + fmt.Sprint(time.Now().UnixNano())
	s := openSink(t, Config{Addr: []string{addr}, Table: table})
	t.Cleanup(func() { _ = s.Conn().Exec(context.Background(), "DROP TABLE IF EXISTS "+s.Table()) })
	if want := "`default`.`" + table + "`"; s.Table() != want {
		t.Errorf("Table() = %q, want %q", s.Table(), want)
	}
}

func TestWriteReadBack(t *testing.T) {
	addr := chtest.Addr(t)
	// Split into several INSERTs, each of several blocks (by rows, and by
	// payload bytes), to exercise those paths too.
	defer func(n, r, b int) { maxInsertRows, blockRows, blockBytes = n, r, b }(maxInsertRows, blockRows, blockBytes)
	maxInsertRows, blockRows = 700, 128
	for _, c := range []Compression{CompressionLZ4, CompressionNone} {
		t.Run(string(c), func(t *testing.T) {
			blockBytes = 16 << 20
			if c == CompressionNone {
				blockBytes = 2000 // a block of about 40 rows
			}
			db := chtest.FreshDatabase(t, addr)
			s := openSink(t, Config{Addr: []string{addr}, Database: db, Compression: c})
			testWriteReadBack(t, s, db)
		})
	}
}

func testWriteReadBack(t *testing.T, s *Sink, db string) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 7))
	days := []int32{day(2024, 1, 30), day(2024, 1, 31), day(2024, 2, 1), day(2024, 2, 2)}

	var all []operators.Row
	var epochs []uint64
	var b sinks.Batch
	var parts [3]sinks.Batch
	// The first write is a join of a batch per partition, as the engine
	// hands it over; the second, smaller one reuses the sink's buffers.
	for i, n := range []int{2500, 333} {
		b.Reset()
		for p := range parts {
			parts[p].Reset()
		}
		b.Epoch = uint64(10 + i)
		for j := range n {
			var r operators.Row
			randomRow(rng, &r, days[rng.IntN(len(days))], int32(j%3), int64(j))
			if i == 0 {
				parts[j%3].Append(&r)
			} else {
				b.Append(&r)
			}
			all = append(all, r)
			epochs = append(epochs, b.Epoch)
		}
		if i == 0 {
			b.Join(&parts[0], &parts[1], &parts[2])
		}
		if err := s.Write(context.Background(), &b); err != nil {
			t.Fatalf("Write: %v", err)
		}
	}
	got := readAll(t, s)
	if len(got) != len(all) {
		t.Fatalf("read %d rows, wrote %d", len(got), len(all))
	}
	byKey := map[[3]int64]int{}
	for i, r := range all {
		byKey[[3]int64{int64(epochs[i]), int64(r.Partition), r.Offset}] = i
	}
	for _, g := range got {
		i, ok := byKey[[3]int64{int64(g.Epoch), int64(g.Partition), g.Offset}]
		if !ok {
			t.Fatalf("unexpected row %+v", g)
		}
		checkRow(t, s, g, &all[i], epochs[i])
	}
	// The rows span two months, so two table partitions.
	var parts2 uint64
	if err := s.Conn().QueryRow(context.Background(), "SELECT uniqExact(partition) FROM system.parts WHERE database = '"+
		db+"' AND table = 'enriched_logs' AND active").Scan(&parts2); err != nil {
		t.Fatal(err)
	}
	if parts2 != 2 {
		t.Errorf("%d table partitions, want 2", parts2)
	}
}

// The blocks of one INSERT make one part, not a part each: the server joins
// them (min_insert_block_size_rows), so small blocks do not multiply parts.
func TestBlocksMakeOnePart(t *testing.T) {
	addr := chtest.Addr(t)
	db := chtest.FreshDatabase(t, addr)
	s := openSink(t, Config{Addr: []string{addr}, Database: db})
	ctx := context.Background()
	if err := s.Conn().Exec(ctx, "SYSTEM STOP MERGES "+s.Table()); err != nil {
		t.Fatal(err)
	}
	defer func(n int) { blockRows = n }(blockRows)
	blockRows = 1000
	var b sinks.Batch
	var r operators.Row
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 20_000 {
		randomRow(rng, &r, day(2024, 1, 1), 0, int64(i))
		b.Append(&r)
	}
	if err := s.Write(ctx, &b); err != nil {
		t.Fatal(err)
	}
	var parts uint64
	if err := s.Conn().QueryRow(ctx, "SELECT count() FROM system.parts WHERE database = '"+db+
		"' AND table = 'enriched_logs' AND active").Scan(&parts); err != nil {
		t.Fatal(err)
	}
	if parts != 1 {
		t.Fatalf("one INSERT of 20 blocks made %d parts, want 1", parts)
	}
}

func TestCompressionValue(t *testing.T) {
	var c Compression
	for in, want := range map[string]Compression{"lz4": CompressionLZ4, "LZ4": CompressionLZ4, "none": CompressionNone} {
		if err := c.Set(in); err != nil || c != want {
			t.Errorf("Set(%q): %v, %q; want %q", in, err, c, want)
		}
	}
	if err := c.Set("zstd"); err == nil {
		t.Error("Set(zstd) succeeded")
	}
	if _, err := Open(context.Background(), Config{Compression: "zstd"}); err == nil || !strings.Contains(err.Error(), "zstd") {
		t.Errorf("Open with compression zstd = %v, want an error naming it", err)
	}
}

func TestWriteEmptyIsNoop(t *testing.T) {
	addr := chtest.Addr(t)
	db := chtest.FreshDatabase(t, addr)
	s := openSink(t, Config{Addr: []string{addr}, Database: db})
	var b sinks.Batch
	b.Epoch = 3
	if err := s.Write(context.Background(), &b); err != nil {
		t.Fatalf("Write of 0 rows: %v", err)
	}
	var n uint64
	if err := s.Conn().QueryRow(context.Background(), "SELECT count() FROM "+s.Table()).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("%d rows after an empty write", n)
	}
}

func TestLanded(t *testing.T) {
	addr := chtest.Addr(t)
	db := chtest.FreshDatabase(t, addr)
	s := openSink(t, Config{Addr: []string{addr}, Database: db})
	rng := rand.New(rand.NewPCG(3, 4))
	days := []int32{day(2023, 12, 31), day(2024, 1, 1), day(2024, 1, 2)}
	type key struct {
		part  int32
		epoch uint64
	}
	want := map[key]map[int32]map[int64]struct{}{} // key -> day -> offsets
	var b sinks.Batch
	var r operators.Row
	for epoch := uint64(1); epoch <= 2; epoch++ {
		b.Reset()
		b.Epoch = epoch
		for part := int32(0); part < 2; part++ {
			for i := range 50 {
				off := int64(epoch)*1000 + int64(i)
				d := days[rng.IntN(len(days))]
				randomRow(rng, &r, d, part, off)
				b.Append(&r)
				k := key{part, epoch}
				if want[k] == nil {
					want[k] = map[int32]map[int64]struct{}{}
				}
				if want[k][d] == nil {
					want[k][d] = map[int64]struct{}{}
				}
				want[k][d][off] = struct{}{}
			}
		}
		if err := s.Write(context.Background(), &b); err != nil {
			t.Fatal(err)
		}
	}
	union := func(k key, ds ...int32) map[int64]struct{} {
		out := map[int64]struct{}{}
		for d, offs := range want[k] {
			if len(ds) > 0 && !containsDay(ds, d) {
				continue
			}
			for o := range offs {
				out[o] = struct{}{}
			}
		}
		return out
	}
	same := func(a, b map[int64]struct{}) bool {
		if len(a) != len(b) {
			return false
		}
		for k := range a {
			if _, ok := b[k]; !ok {
				return false
			}
		}
		return true
	}
	for k := range want {
		got, err := s.Landed(context.Background(), k.part, k.epoch, nil)
		if err != nil {
			t.Fatal(err)
		}
		if w := union(k); !same(got, w) {
			t.Errorf("Landed(%d, %d, nil) = %d offsets, want %d", k.part, k.epoch, len(got), len(w))
		}
		ds := []int32{days[2], days[0], days[2]}
		got, err = s.Landed(context.Background(), k.part, k.epoch, ds)
		if err != nil {
			t.Fatal(err)
		}
		if w := union(k, ds...); !same(got, w) {
			t.Errorf("Landed(%d, %d, %v) = %d offsets, want %d", k.part, k.epoch, ds, len(got), len(w))
		}
	}
	got, err := s.Landed(context.Background(), 7, 1, nil)
	if err != nil || len(got) != 0 {
		t.Errorf("Landed of an unknown partition = %v, %v; want empty", got, err)
	}
	got, err = s.Landed(context.Background(), 0, 3, []int32{days[0]})
	if err != nil || len(got) != 0 {
		t.Errorf("Landed of an unknown epoch = %v, %v; want empty", got, err)
	}
}

func containsDay(ds []int32, d int32) bool {
	for _, x := range ds {
		if x == d {
			return true
		}
	}
	return false
}

func TestConnectErrorIsRetryable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	const password = "s3cret-Passw0rd"
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := Open(ctx, Config{Addr: []string{addr}, Password: password, DialTimeout: 2 * time.Second})
	if err == nil {
		_ = s.Close()
		t.Fatalf("Open of a closed port succeeded")
	}
	t.Logf("error: %v", err)
	if !IsRetryable(err) {
		t.Errorf("IsRetryable(%v) = false, want true", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "clickhouse "+addr+": cannot connect") || strings.Contains(msg, password) {
		t.Errorf("error %q should name the address and not show the password", msg)
	}
}

func TestBadPassword(t *testing.T) {
	addr := chtest.Addr(t)
	const password = "wrong-Passw0rd"
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := Open(ctx, Config{Addr: []string{addr}, User: "no_such_user_fs", Password: password})
	if err == nil {
		_ = s.Close()
		t.Fatal("Open with a bad user succeeded")
	}
	t.Logf("error: %v", err)
	if strings.Contains(err.Error(), password) {
		t.Errorf("error %q shows the password", err)
	}
	if IsRetryable(err) {
		t.Errorf("IsRetryable(%v) = true, want false", err)
	}
}

func TestSchemaErrors(t *testing.T) {
	addr := chtest.Addr(t)
	db := chtest.FreshDatabase(t, addr)
	conn := chtest.Conn(t, addr)
	ctx := context.Background()

	// A table that exists with a wrong column type is refused by Open.
	if err := conn.Exec(ctx, "CREATE TABLE "+db+".wrong (event_date Date, event_time DateTime, uuid String, "+
		"first_seen DateTime, is_new String, late UInt8, src_partition Int32, src_offset Int64, "+
		"payload String, kafka_time DateTime) ENGINE = MergeTree PARTITION BY toYYYYMM(event_date) ORDER BY event_date"); err != nil {
		t.Fatal(err)
	}
	_, err := Open(ctx, Config{Addr: []string{addr}, Database: db, Table: "wrong"})
	if err == nil {
		t.Fatal("Open of a table with a wrong schema succeeded")
	}
	t.Logf("error: %v", err)
	if IsRetryable(err) {
		t.Errorf("IsRetryable(%v) = true, want false", err)
	}
	for _, s := range []string{"`wrong`", "is_new is String, want UInt8", "_epoch is missing"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not mention %q", err, s)
		}
	}

	var b sinks.Batch
	var r operators.Row
	randomRow(rand.New(rand.NewPCG(5, 6)), &r, day(2024, 3, 1), 0, 1)
	b.Append(&r)

	// The table changes under an open sink: the server refuses the column.
	s := openSink(t, Config{Addr: []string{addr}, Database: db, Table: "dropped"})
	if err := conn.Exec(ctx, "ALTER TABLE "+db+".dropped DROP COLUMN late"); err != nil {
		t.Fatal(err)
	}
	err = s.Write(ctx, &b)
	t.Logf("error: %v", err)
	if err == nil || IsRetryable(err) {
		t.Errorf("Write to a table without a column = %v, want a non-retryable error", err)
	} else if !strings.Contains(err.Error(), s.Table()) {
		t.Errorf("error %q does not name the table", err)
	}

	// A column whose type changed: the driver cannot convert.
	s = openSink(t, Config{Addr: []string{addr}, Database: db, Table: "retyped"})
	if err := conn.Exec(ctx, "ALTER TABLE "+db+".retyped MODIFY COLUMN src_offset String"); err != nil {
		t.Fatal(err)
	}
	err = s.Write(ctx, &b)
	t.Logf("error: %v", err)
	if err == nil || IsRetryable(err) {
		t.Errorf("Write to a retyped column = %v, want a non-retryable error", err)
	}
	// The connection is still usable after the failed writes.
	if _, err := s.Landed(ctx, 0, 0, nil); err != nil {
		t.Errorf("Landed after a failed write: %v", err)
	}
}

func TestIsRetryable(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{&ch.Exception{Code: 252, Message: "Too many parts (300). Merges are processing significantly slower than inserts."}, true},
		{&ch.Exception{Code: 252, Message: "Too many partitions for single INSERT block (more than 100)."}, false},
		{&ch.Exception{Code: 159, Message: "Timeout exceeded"}, true},
		{&ch.Exception{Code: 241, Message: "Memory limit exceeded"}, true},
		{&ch.Exception{Code: 16, Message: "No such column late in table"}, false},
		{&ch.Exception{Code: 53, Message: "Type mismatch"}, false},
		{&ch.Exception{Code: 62, Message: "Syntax error"}, false},
		{fmt.Errorf("insert: %w", &ch.Exception{Code: 210, Message: "Connection reset by peer"}), true},
		{io.EOF, true},
		{fmt.Errorf("read: %w", io.ErrUnexpectedEOF), true},
		{fmt.Errorf("dial: %w", syscall.ECONNREFUSED), true},
		{errors.New("dial tcp 127.0.0.1:1: connect: connection refused"), true},
		{&net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}, true},
		{context.DeadlineExceeded, true},
		{context.Canceled, false},
		{&schemaError{problems: []string{"x"}}, false},
		{errors.New("something else"), false},
	} {
		if got := IsRetryable(c.err); got != c.want {
			t.Errorf("IsRetryable(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

func TestHelpers(t *testing.T) {
	for v, want := range map[string]int{"18.16.1": 18, "25.8.1.8": 25, "": 0, "x.y": 0, "21": 21} {
		if got := majorVersion(v); got != want {
			t.Errorf("majorVersion(%q) = %d, want %d", v, got, want)
		}
	}
	if got := quoteIdent("a`b\\c"); got != "`a\\`b\\\\c`" {
		t.Errorf("quoteIdent = %s", got)
	}
	if got := quoteString("it's"); got != `'it\'s'` {
		t.Errorf("quoteString = %s", got)
	}
}

func TestOutOfRange(t *testing.T) {
	const maxSec = int64(1<<32 - 1)
	for _, c := range []struct {
		ms     int64
		narrow bool
		want   int64
	}{
		{-1500, true, 0},
		{-1500, false, -1500},
		{1_700_000_000_123, true, 1_700_000_000},
		{1_700_000_000_123, false, 1_700_000_000_123},
		{(maxSec + 10) * 1000, true, maxSec},
		{(maxSec + 10) * 1000, false, (maxSec + 10) * 1000},
	} {
		if got := timeValue(c.ms, c.narrow); got != c.want {
			t.Errorf("timeValue(%d, %v) = %d, want %d", c.ms, c.narrow, got, c.want)
		}
	}
	for d, want := range map[int32]string{-3: "1970-01-01", 0: "1970-01-01", 19723: "2024-01-01", 70000: "2149-06-06"} {
		if got := dateOf(d).Format(time.DateOnly); got != want {
			t.Errorf("dateOf(%d) = %s, want %s", d, got, want)
		}
	}

	addr := chtest.Addr(t)
	db := chtest.FreshDatabase(t, addr)
	s := openSink(t, Config{Addr: []string{addr}, Database: db})
	var b sinks.Batch
	for i, ms := range []int64{-1500, 0, 999, (maxSec + 5) * 1000} {
		r := operators.Row{EventTime: ms, EventDate: int32(ms / 86_400_000), FirstSeen: ms, Timestamp: ms,
			Offset: int64(i), Payload: []byte("{}")}
		b.Append(&r)
	}
	if err := s.Write(context.Background(), &b); err != nil {
		t.Fatal(err)
	}
	for i, g := range readAll(t, s) {
		var r operators.Row
		b.Row(i, &r)
		want := timeValue(r.EventTime, s.narrow[0])
		if s.narrow[0] {
			want *= 1000
		}
		if got := g.EventTime.UnixMilli(); got != want {
			t.Errorf("row %d: event_time %d stored as %d, want %d", i, r.EventTime, got, want)
		}
		if got, want := g.EventDate.Format(time.DateOnly), dateOf(r.EventDate).Format(time.DateOnly); got != want {
			t.Errorf("row %d: event_date %d stored as %s, want %s", i, r.EventDate, got, want)
		}
	}
}

// BenchmarkWrite measures Write of 100k-row batches to the test server.
func BenchmarkWrite(b *testing.B) {
	addr := chtest.Addr(b)
	db := chtest.FreshDatabase(b, addr)
	ctx := context.Background()
	s, err := Open(ctx, Config{Addr: []string{addr}, Database: db})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	var batch sinks.Batch
	var r operators.Row
	const n = 100_000
	for i := range n {
		randomRow(rng, &r, day(2024, 5, 1+i%3), int32(i%4), int64(i))
		batch.Append(&r)
	}
	b.ResetTimer()
	for range b.N {
		if err := s.Write(ctx, &batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "rows/s")
}

func count(t *testing.T, s *Sink, where string) uint64 {
	t.Helper()
	var n uint64
	if err := s.Conn().QueryRow(context.Background(), "SELECT count() FROM "+s.Table()+" WHERE "+where).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestRetryAfterPartialLanding(t *testing.T) {
	addr := chtest.Addr(t)
	db := chtest.FreshDatabase(t, addr)
	s := openSink(t, Config{Addr: []string{addr}, Database: db})
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(8, 9))
	jan, feb := day(2024, 1, 31), day(2024, 2, 1)

	var full, janOnly sinks.Batch
	full.Epoch, janOnly.Epoch = 5, 5
	var r operators.Row
	for i := range 200 {
		d := jan
		if i%2 == 1 {
			d = feb
		}
		randomRow(rng, &r, d, int32(i%3), int64(i))
		full.Append(&r)
		if d == jan {
			janOnly.Append(&r)
		}
	}
	// A failed write left January (one table partition) behind.
	if err := s.Write(ctx, &janOnly); err != nil {
		t.Fatal(err)
	}
	s.unsure, s.unsureEpoch = true, 5
	if err := s.Write(ctx, &full); err != nil {
		t.Fatal(err)
	}
	var dups uint64
	if err := s.Conn().QueryRow(ctx, "SELECT count() FROM (SELECT src_partition, src_offset FROM "+s.Table()+
		" GROUP BY src_partition, src_offset HAVING count() > 1)").Scan(&dups); err != nil {
		t.Fatal(err)
	}
	if n := count(t, s, "1"); n != 200 || dups != 0 {
		t.Fatalf("%d rows, %d duplicated; want 200 rows once each", n, dups)
	}
	// Everything landed already: nothing to insert.
	s.unsure = true
	if err := s.Write(ctx, &full); err != nil {
		t.Fatal(err)
	}
	if n := count(t, s, "1"); n != 200 {
		t.Fatalf("%d rows, want 200", n)
	}
	if s.unsure {
		t.Error("still unsure after a successful write")
	}
	// Another epoch is not filtered.
	s.unsure = true
	full.Epoch = 6
	if err := s.Write(ctx, &full); err != nil {
		t.Fatal(err)
	}
	if n := count(t, s, "_epoch = 6"); n != 200 {
		t.Fatalf("%d rows of epoch 6, want 200", n)
	}
}

// A retry of a joined batch, in several INSERTs and blocks, inserts the
// rows of every part that did not land, and only those.
func TestRetryJoinedBatch(t *testing.T) {
	addr := chtest.Addr(t)
	db := chtest.FreshDatabase(t, addr)
	s := openSink(t, Config{Addr: []string{addr}, Database: db})
	defer func(n, r int) { maxInsertRows, blockRows = n, r }(maxInsertRows, blockRows)
	maxInsertRows, blockRows = 50, 16
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(12, 13))
	jan, feb := day(2024, 1, 31), day(2024, 2, 1)

	var parts [3]sinks.Batch
	var janOnly, joined sinks.Batch
	janOnly.Epoch, joined.Epoch = 5, 5
	var r operators.Row
	for i := range 300 {
		d := jan
		if i%4 == 1 {
			d = feb
		}
		randomRow(rng, &r, d, int32(i%3), int64(i))
		parts[i%3].Append(&r)
		if d == jan {
			janOnly.Append(&r)
		}
	}
	if err := s.Write(ctx, &janOnly); err != nil {
		t.Fatal(err)
	}
	joined.Join(&parts[0], &parts[1], &parts[2])
	joined.Retry = true // as after a crash
	if err := s.Write(ctx, &joined); err != nil {
		t.Fatal(err)
	}
	var dups uint64
	if err := s.Conn().QueryRow(ctx, "SELECT count() FROM (SELECT src_partition, src_offset FROM "+s.Table()+
		" GROUP BY src_partition, src_offset HAVING count() > 1)").Scan(&dups); err != nil {
		t.Fatal(err)
	}
	if n := count(t, s, "1"); n != 300 || dups != 0 {
		t.Fatalf("%d rows, %d duplicated; want 300 rows once each", n, dups)
	}
	got := readAll(t, s)
	for _, g := range got {
		parts[g.Partition].Row(int(g.Offset)/3, &r)
		checkRow(t, s, g, &r, 5)
	}
}

// A Write whose context ends while a block is on its way returns, even
// when the server has stopped reading: the sink closes the connection.
func TestCancelWhileServerStalls(t *testing.T) {
	addr := chtest.Addr(t)
	db := chtest.FreshDatabase(t, addr)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	stalled := make(chan struct{})
	var once sync.Once
	var insertSeen atomic.Bool
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", addr)
			if err != nil {
				c.Close()
				return
			}
			defer c.Close()
			defer up.Close()
			go func() { _, _ = io.Copy(c, up) }()
			go func() {
				// Forward until an INSERT has sent a megabyte, then
				// stop reading, as a stuck server would.
				buf := make([]byte, 64<<10)
				sent := 0
				for {
					n, err := c.Read(buf)
					if n > 0 {
						if strings.Contains(string(buf[:n]), "INSERT INTO") {
							insertSeen.Store(true)
						}
						if insertSeen.Load() {
							sent += n
						}
						if _, werr := up.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
					if sent > 1<<20 {
						once.Do(func() { close(stalled) })
						return
					}
				}
			}()
		}
	}()
	s := openSink(t, Config{Addr: []string{l.Addr().String()}, Database: db, Compression: CompressionNone})
	var b sinks.Batch
	b.Epoch = 1
	rng := rand.New(rand.NewPCG(5, 6))
	var r operators.Row
	payload := make([]byte, 1000)
	for i := range 60_000 { // 60 MB: more than the connection's buffers hold
		randomRow(rng, &r, day(2024, 3, 1), 0, int64(i))
		for j := range payload {
			payload[j] = 'a' + byte(rng.IntN(26))
		}
		r.Payload = fmt.Appendf(nil, `{"x":"%s"}`, payload)
		b.Append(&r)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Write(ctx, &b) }()
	select {
	case <-stalled:
	case err := <-done:
		t.Fatalf("Write returned before the server stalled: %v", err)
	}
	cancel()
	err = <-done
	t.Logf("error: %v", err)
	if !errors.Is(err, context.Canceled) || IsRetryable(err) {
		t.Fatalf("Write cancelled while the server stalls = %v, want a non-retryable context.Canceled", err)
	}
}

func TestRetryAfterFailedWrite(t *testing.T) {
	addr := chtest.Addr(t)
	db := chtest.FreshDatabase(t, addr)
	s := openSink(t, Config{Addr: []string{addr}, Database: db})
	rng := rand.New(rand.NewPCG(10, 11))
	var b sinks.Batch
	b.Epoch = 2
	var r operators.Row
	for i := range 1000 {
		randomRow(rng, &r, day(2024, 6, 1+i%40), 0, int64(i))
		b.Append(&r)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Write(ctx, &b); err == nil {
		t.Fatal("Write with a cancelled context succeeded")
	}
	if !s.unsure {
		t.Fatal("not unsure after a failed write")
	}
	if err := s.Write(context.Background(), &b); err != nil {
		t.Fatal(err)
	}
	if n := count(t, s, "1"); n != 1000 {
		t.Fatalf("%d rows, want 1000", n)
	}
}

func TestRetryWaitsForRunningInsert(t *testing.T) {
	addr := chtest.Addr(t)
	db := chtest.FreshDatabase(t, addr)
	s := openSink(t, Config{Addr: []string{addr}, Database: db})
	var b sinks.Batch
	b.Epoch = 4
	var r operators.Row
	randomRow(rand.New(rand.NewPCG(1, 3)), &r, day(2024, 1, 1), 0, 0)
	b.Append(&r)

	// An INSERT of epoch 4 from a crashed process is still running on the
	// server: a query with that epoch's id prefix.
	id := s.queryIDPrefix("", 4) + "running"
	done := make(chan error, 1)
	go func() {
		done <- s.Conn().Exec(ch.Context(context.Background(), ch.WithQueryID(id)), "SELECT sleep(2)")
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var n uint64
		if err := s.Conn().QueryRow(context.Background(),
			"SELECT count() FROM system.processes WHERE query_id = '"+id+"'").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the sleeping query does not show in system.processes")
		}
		time.Sleep(10 * time.Millisecond)
	}

	defer func(d time.Duration) { insertWait = d }(insertWait)
	insertWait = 100 * time.Millisecond
	b.Retry = true // as after a crash: nothing in this process knows of the insert
	err := s.Write(context.Background(), &b)
	t.Logf("error: %v", err)
	if !errors.Is(err, errInsertRunning) || !IsRetryable(err) {
		t.Fatalf("Write while the insert runs = %v, want a retryable errInsertRunning", err)
	}

	insertWait = 10 * time.Second
	start := time.Now()
	if err := s.Write(context.Background(), &b); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	t.Logf("waited %v", time.Since(start))
	if n := count(t, s, "1"); n != 1 {
		t.Fatalf("%d rows, want 1", n)
	}
}

// The deduplication token of current servers must name the exact content
// of an INSERT: the same rows give the same token, other rows another one.
// (The test server, 18.16, has no tokens; this checks what is sent.)
func TestDedupToken(t *testing.T) {
	parts, offs := []int32{0, 0, 1}, []int64{10, 11, 10}
	a := dedupToken("`db`.`t`", 5, parts, offs)
	if a != dedupToken("`db`.`t`", 5, parts, offs) {
		t.Fatal("token not deterministic")
	}
	for _, other := range []string{
		dedupToken("`db`.`t`", 6, parts, offs),
		dedupToken("`db`.`u`", 5, parts, offs),
		dedupToken("`db`.`t`", 5, parts[:2], offs[:2]),
		dedupToken("`db`.`t`", 5, []int32{0, 1, 1}, offs),
	} {
		if other == a {
			t.Fatalf("different content, same token %s", a)
		}
	}
	if !strings.Contains(createTableSQL("t", 24), "non_replicated_deduplication_window") ||
		strings.Contains(createTableSQL("t", 18), "SETTINGS") {
		t.Fatal("the deduplication window must be set exactly on servers that have it")
	}
}

// BenchmarkFill measures the conversion of a batch into the sink's block
// buffers, the sink's own share of encoding (ns/op is per row; no server).
func BenchmarkFill(b *testing.B) {
	var k block
	var batch sinks.Batch
	row := operators.Row{EventTime: 1767225600123, EventDate: 20454, FirstSeen: 1767225600000, IsNew: true,
		Offset: 42, Timestamp: 1767225600200, Payload: []byte(`{"event":"page_view","page":"/products/42"}`)}
	for i := 0; i < 10000; i++ {
		row.UUID[0], row.UUID[1] = byte(i), byte(i>>8)
		batch.Append(&row)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i += batch.Len() {
		for j := range batch.Len() {
			k.add(&batch, j, 7, [3]bool{true, true, true})
			if k.full() {
				k.reset()
			}
		}
	}
	k.reset()
}

package main

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"os"
	"reflect"
	"sync/atomic"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"

	"github.com/firstseen/firstseen/operators"
	"github.com/firstseen/firstseen/sinks/clickhouse"
)

type usersQuery struct {
	rows   interface{ Close() error }
	conn   interface{ Close() error }
	scan   func(dest ...any) error
	next   func() bool
	err    func() error
	dests  []any
	uuidV  reflect.Value
	timeV  reflect.Value
	bytes  atomic.Int64 // read by the server, from its progress packets
	prog   *progress
	addr   string
	colTyp [2]string
	closed bool
}

func openUsersQuery(ctx context.Context, f *pipelineFlags, query string, log *slog.Logger) (*usersQuery, error) {
	conn, err := ch.Open(&ch.Options{
		Protocol:    ch.Native,
		Addr:        splitList(f.chAddr),
		Auth:        ch.Auth{Database: f.chDatabase, Username: f.chUser, Password: f.sec.chPassword.value},
		DialTimeout: 10 * time.Second,
		Compression: &ch.Compression{Method: ch.CompressionLZ4},
		TLS:         f.sec.chTLS.config,
	})
	if err != nil {
		return nil, usageError{fmt.Errorf("--clickhouse-addr %s: %w", f.chAddr, err)}
	}
	q := &usersQuery{conn: conn, addr: f.chAddr}
	q.prog = newProgress(os.Stderr, log, "bootstrap", -1)
	qctx := ch.Context(ctx, ch.WithProgress(func(p *ch.Progress) { q.bytes.Add(int64(p.Bytes)) }))
	rows, err := conn.Query(qctx, query)
	if err != nil {
		conn.Close()
		if clickhouse.IsAuthError(err) {
			return nil, fmt.Errorf("ClickHouse at %s refused user %q: %w", f.chAddr, f.chUser, err)
		}
		return nil, fmt.Errorf("--users-query on %s: %w", f.chAddr, err)
	}
	q.rows, q.scan, q.next, q.err = rows, rows.Scan, rows.Next, rows.Err
	cols := rows.ColumnTypes()
	if len(cols) < 2 {
		q.close()
		return nil, usageError{fmt.Errorf("--users-query returns %d column(s): want uuid first and first_seen second", len(cols))}
	}
	for _, c := range cols {
		q.dests = append(q.dests, reflect.New(c.ScanType()).Interface())
	}
	q.uuidV = reflect.ValueOf(q.dests[0]).Elem()
	q.timeV = reflect.ValueOf(q.dests[1]).Elem()
	q.colTyp = [2]string{cols[0].DatabaseTypeName(), cols[1].DatabaseTypeName()}
	if !chUUIDType(q.uuidV.Type()) {
		q.close()
		return nil, usageError{fmt.Errorf("--users-query: the first column (%s) is %s: want String, FixedString or UUID holding the uuid", cols[0].Name(), q.colTyp[0])}
	}
	if !chTimeType(q.timeV.Type()) {
		q.close()
		return nil, usageError{fmt.Errorf("--users-query: the second column (%s) is %s: want DateTime, DateTime64, Date, an integer of epoch milliseconds, or String", cols[1].Name(), q.colTyp[1])}
	}
	return q, nil
}

var timeType = reflect.TypeFor[time.Time]()

func deref(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

func chUUIDType(t reflect.Type) bool {
	t = deref(t)
	return t.Kind() == reflect.String || t.Kind() == reflect.Array && t.Len() == 16 && t.Elem().Kind() == reflect.Uint8
}

func chTimeType(t reflect.Type) bool {
	t = deref(t)
	switch t.Kind() {
	case reflect.String, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return true
	}
	return t == timeType
}

func (q *usersQuery) close() {
	if q.closed {
		return
	}
	q.closed = true
	q.prog.Finish()
	if q.rows != nil {
		q.rows.Close()
	}
	q.conn.Close()
}

func (q *usersQuery) name() string   { return "--users-query" }
func (q *usersQuery) unit() string   { return "row" }
func (q *usersQuery) format() string { return "clickhouse " + q.colTyp[0] + ", " + q.colTyp[1] }

// present follows Nullable pointers; false for NULL.
func present(v reflect.Value) (reflect.Value, bool) {
	for v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return v, false
		}
		v = v.Elem()
	}
	return v, true
}

func (q *usersQuery) each(sink *bootstrapSink) error {
	var u operators.UUID
	var row int64
	var reported int64
	for q.next() {
		row++
		if row&0xfff == 0 {
			if b := q.bytes.Load(); b > reported {
				q.prog.Add(b - reported)
				reported = b
			}
		}
		if err := q.scan(q.dests...); err != nil {
			return fmt.Errorf("--users-query row %d: %w", row, err)
		}
		if err := q.row(sink, row, &u); err != nil {
			return err
		}
	}
	if err := q.err(); err != nil {
		return fmt.Errorf("--users-query on %s: %w", q.addr, err)
	}
	return nil
}

func (q *usersQuery) row(sink *bootstrapSink, row int64, u *operators.UUID) error {
	v, ok := present(q.uuidV)
	if !ok {
		return sink.bad(row, "uuid is NULL")
	}
	if v.Kind() == reflect.String {
		s := v.String()
		if *u, ok = parseUUID([]byte(s)); !ok {
			return sink.bad(row, fmt.Sprintf("bad uuid %s: %s", quoteExcerpt([]byte(s)), badUUIDWant))
		}
	} else {
		copy(u[:], v.Bytes())
	}
	v, ok = present(q.timeV)
	if !ok {
		return sink.bad(row, "first_seen is NULL")
	}
	var t int64
	switch {
	case v.Kind() == reflect.String:
		s := v.String()
		if t, ok = operators.ParseEventTime([]byte(s)); !ok {
			return sink.bad(row, fmt.Sprintf("bad first_seen %s: %s", quoteExcerpt([]byte(s)), timeHint([]byte(s))))
		}
		return sink.good(u, t)
	case v.CanInt():
		t = v.Int()
	case v.CanUint():
		if x := v.Uint(); x <= math.MaxInt64 {
			t = int64(x)
		} else {
			t = math.MaxInt64
		}
	default:
		t = v.Addr().Interface().(*time.Time).UnixMilli()
	}
	if t < operators.MinEventTime || t > operators.MaxEventTime {
		return sink.bad(row, fmt.Sprintf("first_seen %d ms is outside 1970-01-01 to 2106-02-07", t))
	}
	return sink.good(u, t)
}

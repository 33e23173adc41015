package clickhouse

import (
	"context"
	"testing"
	"time"

	"github.com/firstseen/firstseen/sinks"
	"github.com/firstseen/firstseen/sinks/clickhouse/chtest"
	"github.com/firstseen/firstseen/sinks/sinktest"
)

// TestConformance runs the sink conformance suite against the real
// ClickHouse server, through a TCP proxy that the suite's Break cuts.
func TestConformance(t *testing.T) {
	addr := chtest.Addr(t)
	px := chtest.NewProxy(t, addr)
	conn := chtest.Conn(t, addr)
	var db string
	sinktest.Run(t, sinktest.Harness{
		TimePrecision: time.Second, // DateTime on 18.x servers
		Reset:         func(t *testing.T) { db = chtest.FreshDatabase(t, addr) },
		Open: func(t *testing.T) sinks.Sink {
			return openSink(t, Config{Addr: []string{px.Addr()}, Database: db, DialTimeout: 5 * time.Second})
		},
		Break: func(t *testing.T, _ sinks.Sink) func() {
			px.Down()
			return px.Up
		},
		Read: func(t *testing.T) []sinks.Line {
			rows, err := conn.Query(context.Background(), "SELECT uuid, event_time, toString(event_date), first_seen, is_new, late, "+
				"src_partition, src_offset, kafka_time, payload FROM `"+db+"`.enriched_logs")
			if err != nil {
				t.Fatal(err)
			}
			defer rows.Close()
			var out []sinks.Line
			for rows.Next() {
				var l sinks.Line
				var isNew, late uint8
				var payload string
				if err := rows.Scan(&l.UUID, &l.EventTime, &l.EventDate, &l.FirstSeen, &isNew, &late, &l.Partition, &l.Offset,
					&l.KafkaTime, &payload); err != nil {
					t.Fatal(err)
				}
				l.IsNew, l.Late, l.Payload = isNew == 1, late == 1, []byte(payload)
				out = append(out, l)
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
			return out
		},
	})
}

package main

import (
	"context"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/firstseen/firstseen/engine/workload"
	"github.com/firstseen/firstseen/operators"
	"github.com/firstseen/firstseen/sinks/clickhouse"
)

// expected indexes the oracle by partition and offset.
type expected struct {
	byPartition [][]workload.Expected
	rows        int64 // records that become rows
	users       int64 // distinct users of those rows
}

func newExpected(recs []workload.Record, partitions int) expected {
	e := expected{byPartition: make([][]workload.Expected, partitions)}
	users := map[operators.UUID]struct{}{}
	for _, x := range workload.Oracle(recs, operators.Config{}, nil) {
		e.byPartition[x.Partition] = append(e.byPartition[x.Partition], x)
		if x.Reason == operators.OK {
			e.rows++
			users[x.UUID] = struct{}{}
		}
	}
	e.users = int64(len(users))
	return e
}

// check is a table compared with the oracle.
type check struct {
	Rows       int64 `json:"rows"`
	Expected   int64 `json:"expected"`
	Missing    int64 `json:"missing"`
	Duplicated int64 `json:"duplicated"`
	WrongIsNew int64 `json:"wrong_is_new"`
	WrongLate  int64 `json:"wrong_late"`
	Unexpected int64 `json:"unexpected"` // rows for records that should have been dead-lettered
}

// Wrong is every row that differs from the oracle: missing, duplicated,
// unexpected, or with another is_new or late.
func (c check) Wrong() int64 {
	return c.Missing + c.Duplicated + c.Unexpected + c.WrongIsNew + c.WrongLate
}

func (c check) String() string {
	return fmt.Sprintf("%d rows of %d expected: %d missing, %d duplicated, %d unexpected, %d wrong is_new, %d wrong late",
		c.Rows, c.Expected, c.Missing, c.Duplicated, c.Unexpected, c.WrongIsNew, c.WrongLate)
}

// tableRow is one row as the benchmark reads it back.
type tableRow struct {
	partition int32
	offset    int64
	isNew     bool
	late      bool
	epoch     uint64
}

// eachRow reads the whole table.
func eachRow(ctx context.Context, s *clickhouse.Sink, fn func(r tableRow)) error {
	rows, err := s.Conn().Query(ctx, "SELECT src_partition, src_offset, is_new, late, _epoch FROM "+s.Table())
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var r tableRow
		var isNew, late uint8
		if err := rows.Scan(&r.partition, &r.offset, &isNew, &late, &r.epoch); err != nil {
			return err
		}
		r.isNew, r.late = isNew == 1, late == 1
		fn(r)
	}
	return rows.Err()
}

// checkTable compares the table with the oracle.
func checkTable(ctx context.Context, s *clickhouse.Sink, exp expected) (check, error) {
	c := check{Expected: exp.rows}
	seen := make([][]uint8, len(exp.byPartition))
	for p := range seen {
		seen[p] = make([]uint8, len(exp.byPartition[p]))
	}
	err := eachRow(ctx, s, func(r tableRow) {
		c.Rows++
		if int(r.partition) >= len(seen) || r.offset < 0 || r.offset >= int64(len(seen[r.partition])) {
			c.Unexpected++
			return
		}
		x := &exp.byPartition[r.partition][r.offset]
		if x.Reason != operators.OK {
			c.Unexpected++
			return
		}
		if seen[r.partition][r.offset]++; seen[r.partition][r.offset] > 1 {
			c.Duplicated++
			return
		}
		if r.isNew != x.IsNew {
			c.WrongIsNew++
		}
		if r.late != x.Late {
			c.WrongLate++
		}
	})
	for p := range seen {
		for o, n := range seen[p] {
			if n == 0 && exp.byPartition[p][o].Reason == operators.OK {
				c.Missing++
			}
		}
	}
	return c, err
}

// openTable connects to ClickHouse with the table created and emptied.
func (b *bench) openTable(ctx context.Context, table string) (*clickhouse.Sink, error) {
	s, err := clickhouse.Open(ctx, clickhouse.Config{Addr: []string{b.o.chAddr}, Database: b.o.chDatabase, Table: table,
		DialTimeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("ClickHouse at %s: %w (start it with .ci/clickhouse ensure)", b.o.chAddr, err)
	}
	if err := s.Conn().Exec(ctx, "TRUNCATE TABLE "+s.Table()); err != nil {
		s.Close()
		return nil, fmt.Errorf("empty %s: %w", s.Table(), err)
	}
	return s, nil
}

// createTopic creates topic with the given partitions.
func createTopic(ctx context.Context, brokers []string, topic string, partitions int) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return err
	}
	defer cl.Close()
	resp, err := kadm.NewClient(cl).CreateTopic(ctx, int32(partitions), 1, nil, topic)
	if err != nil {
		return err
	}
	return resp.Err
}

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/firstseen/firstseen/operators"
	"github.com/firstseen/firstseen/sinks"
	"github.com/firstseen/firstseen/sinks/clickhouse"
)

// redisHash is the one hash holding {uuid: first active ms}, as in the seed.
const redisHash = "first_active"

type redisDesignOptions struct {
	brokers, topic       string
	redisAddr            string
	chAddr, chDatabase   string
	chTable              string
	chCompression        string
	flushInterval        time.Duration
	flushRows            int
	flushBytes           int
	uuidField, timeField string
	timezone             string
}

// newRedisDesignCmd is the design firstseen replaces, as the seed describes
// it and as fast as it reasonably goes: per fetched batch, one pipeline of
// HGET uuid, then one pipeline of HSET for the users whose first active
// time is new or earlier. A record is new when the user's first active
// time (the earlier of stored and this record's) falls on the record's
// day. There are no watermarks: a record is decided when it is read. Rows
// go to ClickHouse through firstseen's own sink, in batches as large as
// firstseen's (by default 32 MiB, as its --buffer-mib), and the run ends
// when it has read what the topic held at start. Malformed records are
// skipped.
func newRedisDesignCmd() *cobra.Command {
	var o redisDesignOptions
	cmd := &cobra.Command{
		Use:    "redis-design",
		Short:  "Process the topic the way the seed's Redis hash design does (started by the benchmark)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runRedisDesign(cmd.Context(), o)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&o.brokers, "brokers", "", "Kafka bootstrap broker")
	fs.StringVar(&o.topic, "topic", "", "topic to read from its start")
	fs.StringVar(&o.redisAddr, "redis-addr", "", "redis-server host:port")
	fs.StringVar(&o.chAddr, "clickhouse-addr", "localhost:9000", "ClickHouse native address")
	fs.StringVar(&o.chDatabase, "clickhouse-database", "default", "ClickHouse database")
	fs.StringVar(&o.chTable, "clickhouse-table", "bench_redis", "ClickHouse table")
	fs.StringVar(&o.chCompression, "clickhouse-compression", "lz4", "compression of INSERTs: lz4 or none")
	fs.DurationVar(&o.flushInterval, "flush-interval", 5*time.Second, "write rows to ClickHouse at least this often")
	fs.IntVar(&o.flushRows, "flush-rows", 800_000, "write rows to ClickHouse when this many are buffered")
	fs.IntVar(&o.flushBytes, "flush-bytes", 32<<20, "write rows to ClickHouse when they take this many bytes (firstseen's default --buffer-mib)")
	fs.StringVar(&o.uuidField, "uuid-field", "uuid", "JSON member of the uuid")
	fs.StringVar(&o.timeField, "time-field", "event_time", "JSON member of the event time")
	fs.StringVar(&o.timezone, "timezone", "UTC", "time zone of calendar days")
	return cmd
}

type pendingRecord struct {
	uuid      operators.UUID
	key       string
	eventTime int64
	rec       *kgo.Record
	payload   []byte
}

func runRedisDesign(ctx context.Context, o redisDesignOptions) error {
	if ctx == nil {
		ctx = context.Background()
	}
	loc, err := time.LoadLocation(o.timezone)
	if err != nil {
		return err
	}
	cal := operators.NewCalendar(loc)
	rdb := redis.NewClient(&redis.Options{Addr: o.redisAddr, PoolSize: 4})
	defer rdb.Close()
	if err := rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis at %s: %w", o.redisAddr, err)
	}
	sink, err := clickhouse.Open(ctx, clickhouse.Config{Addr: []string{o.chAddr}, Database: o.chDatabase, Table: o.chTable,
		Compression: clickhouse.Compression(o.chCompression)})
	if err != nil {
		return err
	}
	defer sink.Close()

	cl, err := kgo.NewClient(kgo.SeedBrokers(o.brokers), kgo.ConsumeTopics(o.topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		return err
	}
	defer cl.Close()
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, o.topic)
	if err != nil {
		return fmt.Errorf("list end offsets: %w", err)
	}
	remaining := map[int32]int64{}
	ends.Each(func(e kadm.ListedOffset) {
		if e.Offset > 0 {
			remaining[e.Partition] = e.Offset
		}
	})

	dec := operators.NewDecoder(o.uuidField, o.timeField)
	var (
		ev        operators.Event
		batch     sinks.Batch
		epoch     uint64
		lastFlush = time.Now()
		pending   []pendingRecord
		canon     []byte
		records   int64
		skipped   int64
	)
	flush := func() error {
		if batch.Len() == 0 {
			return nil
		}
		epoch++
		batch.Epoch = epoch
		if err := sink.Write(ctx, &batch); err != nil {
			return err
		}
		batch.Reset()
		lastFlush = time.Now()
		return nil
	}
	for len(remaining) > 0 {
		fs := cl.PollFetches(ctx)
		if err := fs.Err0(); err != nil {
			return err
		}
		var ferr error
		fs.EachError(func(_ string, _ int32, err error) { ferr = errors.Join(ferr, err) })
		if ferr != nil {
			return ferr
		}
		pending = pending[:0]
		fs.EachRecord(func(r *kgo.Record) {
			records++
			if end, ok := remaining[r.Partition]; ok && r.Offset+1 >= end {
				delete(remaining, r.Partition)
			}
			if dec.Decode(r.Value, &ev) != operators.OK {
				skipped++
				return
			}
			canon = ev.UUID.AppendCanonical(canon[:0])
			pending = append(pending, pendingRecord{uuid: ev.UUID, key: string(canon), eventTime: ev.EventTime,
				rec: r, payload: append([]byte(nil), ev.Payload...)})
		})
		if len(pending) == 0 {
			continue
		}
		// One round trip to look every user of the batch up ...
		pipe := rdb.Pipeline()
		gets := make([]*redis.StringCmd, len(pending))
		for i := range pending {
			gets[i] = pipe.HGet(ctx, redisHash, pending[i].key)
		}
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return fmt.Errorf("redis HGET pipeline: %w", err)
		}
		// ... decide each record in the order read, seeing the batch's own
		// earlier records ...
		known := make(map[string]int64, len(pending))
		changed := make(map[string]int64)
		for i := range pending {
			p := &pending[i]
			first, ok := known[p.key]
			if !ok {
				if v, err := gets[i].Result(); err == nil {
					first, ok = parseMs(v)
				}
			}
			if !ok || p.eventTime < first {
				first = p.eventTime
				changed[p.key] = first
			}
			known[p.key] = first
			_, day := cal.Day(p.eventTime)
			_, firstDay := cal.Day(first)
			batch.Append(&operators.Row{UUID: p.uuid, EventTime: p.eventTime, EventDate: day, FirstSeen: first,
				IsNew: firstDay == day, Partition: p.rec.Partition, Offset: p.rec.Offset,
				Timestamp: p.rec.Timestamp.UnixMilli(), Payload: p.payload})
		}
		// ... and one round trip to store the new and earlier first times.
		if len(changed) > 0 {
			pipe = rdb.Pipeline()
			for k, v := range changed {
				pipe.HSet(ctx, redisHash, k, strconv.FormatInt(v, 10))
			}
			if _, err := pipe.Exec(ctx); err != nil {
				return fmt.Errorf("redis HSET pipeline: %w", err)
			}
		}
		if batch.Len() >= o.flushRows || batch.Bytes() >= o.flushBytes || time.Since(lastFlush) >= o.flushInterval {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}
	fmt.Fprintf(os.Stdout, "redis design: %d records, %d skipped as malformed, %d writes to ClickHouse\n", records, skipped, epoch)
	return nil
}

func parseMs(s string) (int64, bool) {
	v, err := strconv.ParseInt(s, 10, 64)
	return v, err == nil
}

// runRedis runs the Redis design over the workload topic in its own
// process, against an emptied redis-server, and measures it like firstseen.
func (b *bench) runRedis(ctx context.Context, run int) (redisResult, error) {
	var res redisResult
	rdb := redis.NewClient(&redis.Options{Addr: b.redis})
	defer rdb.Close()
	if err := rdb.FlushAll(ctx).Err(); err != nil {
		return res, fmt.Errorf("redis FLUSHALL: %w", err)
	}
	base, err := redisUsedMemory(ctx, rdb)
	if err != nil {
		return res, err
	}
	sink, err := b.openTable(ctx, "bench_redis")
	if err != nil {
		return res, err
	}
	defer sink.Close()
	self, err := os.Executable()
	if err != nil {
		return res, err
	}
	log := filepath.Join(b.work, fmt.Sprintf("run%d-redis.log", run))
	before := b.services()
	c, err := startChild("redis design", log, nil, self, "redis-design", "--brokers", b.brokers[0], "--topic", b.topic,
		"--redis-addr", b.redis, "--clickhouse-addr", b.o.chAddr, "--clickhouse-database", b.o.chDatabase, "--clickhouse-table", "bench_redis",
		"--clickhouse-compression", b.o.chCompression,
		"--flush-interval", b.o.checkpointInterval.String(), "--flush-rows", itoa(200_000*b.o.partitions))
	if err != nil {
		return res, err
	}
	u, err := c.wait(time.Hour)
	if err != nil {
		return res, err
	}
	res.processResult = b.processResult(u, before, b.services())
	used, err := redisUsedMemory(ctx, rdb)
	if err != nil {
		return res, err
	}
	if res.RedisUsers, err = rdb.HLen(ctx, redisHash).Result(); err != nil {
		return res, err
	}
	res.RedisUsedBytes = used - base
	if res.RedisUsers > 0 {
		res.RedisPerUser = float64(res.RedisUsedBytes) / float64(res.RedisUsers)
	}
	res.Check, err = checkTable(ctx, sink, b.exp)
	return res, err
}

// redisUsedMemory is INFO memory's used_memory.
func redisUsedMemory(ctx context.Context, rdb *redis.Client) (int64, error) {
	info, err := rdb.Info(ctx, "memory").Result()
	if err != nil {
		return 0, fmt.Errorf("redis INFO memory: %w", err)
	}
	for _, l := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "used_memory:"); ok {
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, fmt.Errorf("redis INFO memory has no used_memory")
}

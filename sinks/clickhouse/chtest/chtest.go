// Package chtest connects tests to a real ClickHouse server.
//
// The server's native address comes from FIRSTSEEN_TEST_CLICKHOUSE (default
// 127.0.0.1:9000). When it does not answer, tests are skipped, or fail when
// FIRSTSEEN_REQUIRE_CLICKHOUSE=1 (as in CI, after `.ci/clickhouse ensure`).
package chtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"sync"
	"testing"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// Environment variables read by [Addr].
const (
	EnvAddr     = "FIRSTSEEN_TEST_CLICKHOUSE"
	EnvRequire  = "FIRSTSEEN_REQUIRE_CLICKHOUSE"
	DefaultAddr = "127.0.0.1:9000"
)

var (
	mu      sync.Mutex
	reached = map[string]error{} // addresses tried by this process
)

// Addr returns the test server's address once it answers a ping. Otherwise
// it skips the test, or fails it when FIRSTSEEN_REQUIRE_CLICKHOUSE=1. The
// outcome is remembered for the rest of the process.
func Addr(t testing.TB) string {
	t.Helper()
	addr := os.Getenv(EnvAddr)
	if addr == "" {
		addr = DefaultAddr
	}
	mu.Lock()
	err, tried := reached[addr]
	if !tried {
		err = ping(addr)
		reached[addr] = err
	}
	mu.Unlock()
	if err != nil {
		if os.Getenv(EnvRequire) == "1" {
			t.Fatalf("ClickHouse at %s is required (%s=1) but does not answer: %v", addr, EnvRequire, err)
		}
		t.Skipf("no ClickHouse at %s (%v): run `.ci/clickhouse ensure` or set %s", addr, err, EnvAddr)
	}
	return addr
}

func ping(addr string) error {
	conn, err := open(addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return conn.Ping(ctx)
}

func open(addr string) (driver.Conn, error) {
	return ch.Open(&ch.Options{Protocol: ch.Native, Addr: []string{addr}, DialTimeout: 5 * time.Second})
}

// Conn returns a connection pool to addr, closed when the test ends.
func Conn(t testing.TB, addr string) driver.Conn {
	t.Helper()
	conn, err := open(addr)
	if err != nil {
		t.Fatalf("clickhouse %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// FreshDatabase creates a database with a unique name (fs_test_<random>) and
// drops it when the test ends. It returns the database's name, which needs
// no quoting.
func FreshDatabase(t testing.TB, addr string) string {
	t.Helper()
	var b [8]byte
	_, _ = rand.Read(b[:])
	name := "fs_test_" + hex.EncodeToString(b[:])
	conn, err := open(addr)
	if err != nil {
		t.Fatalf("clickhouse %s: %v", addr, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		_ = conn.Close()
		t.Fatalf("clickhouse %s: create database %s: %v", addr, name, err)
	}
	t.Cleanup(func() {
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name); err != nil {
			t.Errorf("clickhouse %s: drop database %s: %v", addr, name, err)
		}
	})
	return name
}

// Package testsecrets gives tests the test-only credentials of
// testdata/secrets.env at the top of the repository: one place for the
// tests, for .ci/clickhouse (which creates the ClickHouse test user from
// it) and for `make test`, which fails when one of the passwords appears
// in the tests' output.
package testsecrets

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// The names in testdata/secrets.env.
const (
	KafkaUser          = "FIRSTSEEN_TEST_KAFKA_USER"
	KafkaPassword      = "FIRSTSEEN_TEST_KAFKA_PASSWORD"
	KafkaFilePassword  = "FIRSTSEEN_TEST_KAFKA_FILE_PASSWORD"
	ClickHouseUser     = "FIRSTSEEN_TEST_CLICKHOUSE_USER"
	ClickHousePassword = "FIRSTSEEN_TEST_CLICKHOUSE_PASSWORD"
	WrongPassword      = "FIRSTSEEN_TEST_WRONG_PASSWORD"
)

var (
	once   sync.Once
	values map[string]string
	err    error
)

// Get returns the value of name, failing the test when the file or the
// name is missing.
func Get(t testing.TB, name string) string {
	t.Helper()
	once.Do(load)
	if err != nil {
		t.Fatalf("testsecrets: %v", err)
	}
	v, ok := values[name]
	if !ok || v == "" {
		t.Fatalf("testsecrets: %s is not in testdata/secrets.env", name)
	}
	return v
}

// Passwords returns every *_PASSWORD value of the file: the strings no
// output may contain.
func Passwords(t testing.TB) []string {
	t.Helper()
	once.Do(load)
	if err != nil {
		t.Fatalf("testsecrets: %v", err)
	}
	var out []string
	for k, v := range values {
		if strings.HasSuffix(k, "_PASSWORD") {
			out = append(out, v)
		}
	}
	return out
}

// load reads testdata/secrets.env from the directory holding go.mod.
func load() {
	dir, e := os.Getwd()
	if e != nil {
		err = e
		return
	}
	for {
		if _, e := os.Stat(filepath.Join(dir, "go.mod")); e == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			err = os.ErrNotExist
			return
		}
		dir = parent
	}
	f, e := os.Open(filepath.Join(dir, "testdata", "secrets.env"))
	if e != nil {
		err = e
		return
	}
	defer f.Close()
	values = map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok {
			values[k] = v
		}
	}
	err = sc.Err()
}

package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/firstseen/firstseen/engine/enginetest"
	"github.com/firstseen/firstseen/engine/workload"
	"github.com/firstseen/firstseen/internal/testcerts"
	"github.com/firstseen/firstseen/internal/testsecrets"
	"github.com/firstseen/firstseen/operators"
	"github.com/firstseen/firstseen/sinks/clickhouse/chtest"
	"github.com/firstseen/firstseen/sinks/filesink"
)

// The security tests run the real pipeline against kfake brokers that
// require SASL or TLS (or both), and against the real ClickHouse's secure
// port with a user and password. The credentials are those of
// testdata/secrets.env; no output may contain a password.

// secureBroker is a kfake cluster that requires SASL and/or TLS, with the
// topic activity (2 partitions) holding a small workload.
type secureBroker struct {
	c    *kfake.Cluster
	user string
	pass string
	opts []kgo.Opt // a client's options that get in (SCRAM-SHA-256, TLS)
	want []workload.Expected
	ca   *testcerts.CA // of the server certificate, with TLS
}

// brokerOpts say how a secureBroker is secured.
type brokerOpts struct {
	mechanisms []string // SASL mechanisms the user is known under; none: no SASL
	tls        bool
	clientCert bool // with tls: require a client certificate signed by the CA
}

func newSecureBroker(t *testing.T, o brokerOpts) *secureBroker {
	t.Helper()
	b := &secureBroker{user: testsecrets.Get(t, testsecrets.KafkaUser), pass: testsecrets.Get(t, testsecrets.KafkaPassword)}
	opts := []kfake.Opt{kfake.NumBrokers(1), kfake.SeedTopics(2, activity)}
	if len(o.mechanisms) > 0 {
		opts = append(opts, kfake.EnableSASL())
		// A second user has the password of the file tests.
		filePass := testsecrets.Get(t, testsecrets.KafkaFilePassword)
		for _, m := range o.mechanisms {
			opts = append(opts, kfake.Superuser(m, b.user, b.pass), kfake.Superuser(m, b.user+"-file", filePass))
		}
		sec := securityFlags{saslMechanism: o.mechanisms[0], kafkaUser: b.user, kafkaPassword: secret{value: b.pass}}
		b.opts = append(b.opts, kgo.SASL(sec.mechanism()))
	}
	if o.tls {
		b.ca = testcerts.NewCA(t, "kafka test CA")
		cfg := &tls.Config{Certificates: []tls.Certificate{b.ca.Server(t)}, MinVersion: tls.VersionTLS12}
		client := &tls.Config{RootCAs: b.ca.Pool()}
		if o.clientCert {
			cfg.ClientAuth, cfg.ClientCAs = tls.RequireAndVerifyClientCert, b.ca.Pool()
			client.Certificates = []tls.Certificate{b.ca.Client(t, "producer")}
		}
		opts = append(opts, kfake.TLS(cfg))
		b.opts = append(b.opts, kgo.DialTLSConfig(client))
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	b.c = c
	recs, err := workload.Generate(workload.Config{Users: 200, Days: 2, Partitions: 2, Seed: 11,
		Start: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := workload.Produce(ctx, c.ListenAddrs(), activity, recs, b.opts...); err != nil {
		t.Fatal(err)
	}
	b.want = workload.Oracle(recs, operators.Config{Tolerance: 10 * time.Minute}, nil)
	return b
}

// runArgs are the flags of a `firstseen run --until-caught-up` of the
// broker's topic into a JSON Lines file, with a group of its own.
func (b *secureBroker) runArgs(t *testing.T, out string, extra ...string) []string {
	run := fmt.Sprint(time.Now().UnixNano())
	return append([]string{"run", "--brokers", b.c.ListenAddrs()[0], "--topic", activity,
		"--group", "g-" + run, "--dlq-topic", "dlq-" + run,
		"--state-dir", t.TempDir(), "--sink", "file", "--sink-path", out, "--until-caught-up",
		"--checkpoint-interval", "200ms", "--log-level", "error", "--metrics-addr", "0"}, extra...)
}

// checkFileRows checks the JSON Lines rows against the oracle.
func checkFileRows(t *testing.T, path string, want []workload.Expected) {
	t.Helper()
	lines, err := filesink.ReadDir(path)
	if err != nil {
		t.Fatal(err)
	}
	got := map[[2]int64]filesink.Line{}
	for _, l := range lines {
		got[[2]int64{int64(l.Partition), l.Offset}] = l
	}
	for _, e := range want {
		if e.Reason != operators.OK {
			continue
		}
		l, ok := got[[2]int64{int64(e.Partition), e.Offset}]
		if !ok || l.UUID != e.UUID.String() || l.IsNew != e.IsNew || l.Late != e.Late {
			t.Fatalf("partition %d offset %d: got %+v (present %v), want %+v", e.Partition, e.Offset, l, ok, e)
		}
	}
	if n := enginetest.ValidCount(want); len(lines) != n {
		t.Fatalf("%d rows, want %d", len(lines), n)
	}
}

// Each SASL mechanism gets in, and the processor reads the topic, writes
// its dead letters and changelog, all through it: the password from the
// environment or from a file.
func TestKafkaSASLMechanisms(t *testing.T) {
	b := newSecureBroker(t, brokerOpts{mechanisms: []string{"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}})
	for i, mech := range []string{"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"} {
		t.Run(mech, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "rows")
			args := b.runArgs(t, out, "--kafka-sasl-mechanism", strings.ToLower(mech), "--kafka-user", b.user)
			if i%2 == 0 {
				t.Setenv(kafkaPasswordEnv, b.pass)
			} else {
				args = append(args, "--kafka-password-file", writeTemp(t, "kafka-password", []byte(b.pass+"\n")))
			}
			if _, errOut, err := runCLI(t, nil, args...); err != nil {
				t.Fatalf("run with %s: %v\n%s", mech, err, errOut)
			}
			checkFileRows(t, out, b.want)
		})
	}
}

// TLS with a private CA, with and without a client certificate the broker
// requires, and SCRAM over TLS.
func TestKafkaTLS(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    brokerOpts
	}{
		{"server certificate", brokerOpts{tls: true}},
		{"client certificate", brokerOpts{tls: true, clientCert: true}},
		{"SCRAM over TLS", brokerOpts{tls: true, mechanisms: []string{"SCRAM-SHA-256"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newSecureBroker(t, tc.o)
			dir := t.TempDir()
			out := filepath.Join(dir, "rows")
			args := b.runArgs(t, out, "--kafka-tls", "--kafka-tls-ca-file", b.ca.WriteCA(t, dir, "ca.pem"))
			if tc.o.clientCert {
				cert, key := testcerts.WritePair(t, b.ca.Client(t, "firstseen"), dir, "client")
				args = append(args, "--kafka-tls-cert-file", cert, "--kafka-tls-key-file", key)
			}
			if len(tc.o.mechanisms) > 0 {
				t.Setenv(kafkaPasswordEnv, b.pass)
				args = append(args, "--kafka-sasl-mechanism", tc.o.mechanisms[0], "--kafka-user", b.user)
			}
			if _, errOut, err := runCLI(t, nil, args...); err != nil {
				t.Fatalf("run: %v\n%s", err, errOut)
			}
			checkFileRows(t, out, b.want)
		})
	}
}

// runToExit runs the binary and waits for it to exit within limit; it
// returns the exit status and the output.
func runToExit(t *testing.T, limit time.Duration, env []string, args ...string) (int, string, time.Duration) {
	t.Helper()
	began := time.Now()
	p := start(t, "firstseen", env, args...)
	select {
	case <-p.done:
	case <-time.After(limit):
		t.Fatalf("still running after %s:\n%s", limit, tail(p.out.String(), 3000))
	}
	var exit *exec.ExitError
	if p.err != nil && !errors.As(p.err, &exit) {
		t.Fatal(p.err)
	}
	code := 0
	if exit != nil {
		code = exit.ExitCode()
	}
	return code, p.out.String(), time.Since(began)
}

// errorLine is the error the process exited with.
func errorLine(output string) string {
	for _, l := range strings.Split(output, "\n") {
		if strings.HasPrefix(l, "firstseen: ") {
			return l
		}
	}
	return ""
}

// Wrong credentials stop the process quickly with status 1 and an error
// that says what was refused, and never the password.
func TestKafkaRefusedQuickly(t *testing.T) {
	binary(t) // built before the clock starts
	wrong := testsecrets.Get(t, testsecrets.WrongPassword)
	scramOnly := newSecureBroker(t, brokerOpts{mechanisms: []string{"SCRAM-SHA-256"}})
	tlsBroker := newSecureBroker(t, brokerOpts{tls: true})
	certBroker := newSecureBroker(t, brokerOpts{tls: true, clientCert: true})
	dir := t.TempDir()
	otherCA := testcerts.NewCA(t, "another CA").WriteCA(t, dir, "other-ca.pem")
	cases := []struct {
		name string
		b    *secureBroker
		env  []string
		args []string
		want string
	}{
		{"wrong password", scramOnly, []string{kafkaPasswordEnv + "=" + wrong},
			[]string{"--kafka-sasl-mechanism", "SCRAM-SHA-256", "--kafka-user", scramOnly.user},
			fmt.Sprintf("Kafka authentication failed for user %q with SCRAM-SHA-256", scramOnly.user)},
		{"unknown user", scramOnly, []string{kafkaPasswordEnv + "=" + scramOnly.pass},
			[]string{"--kafka-sasl-mechanism", "SCRAM-SHA-256", "--kafka-user", "nobody"},
			`Kafka authentication failed for user "nobody" with SCRAM-SHA-256`},
		{"wrong mechanism", scramOnly, []string{kafkaPasswordEnv + "=" + scramOnly.pass},
			[]string{"--kafka-sasl-mechanism", "SCRAM-SHA-512", "--kafka-user", scramOnly.user},
			fmt.Sprintf("Kafka authentication failed for user %q with SCRAM-SHA-512", scramOnly.user)},
		{"no SASL", scramOnly, nil, nil, "closed the connection"},
		{"untrusted CA", tlsBroker, nil, []string{"--kafka-tls", "--kafka-tls-ca-file", otherCA},
			"Kafka TLS handshake with " + tlsBroker.c.ListenAddrs()[0] + " failed"},
		{"system CAs", tlsBroker, nil, []string{"--kafka-tls"}, "needs --kafka-tls-ca-file"},
		{"no client certificate", certBroker, nil,
			[]string{"--kafka-tls", "--kafka-tls-ca-file", certBroker.ca.WriteCA(t, dir, "ca.pem")}, "Kafka TLS handshake"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "rows")
			code, output, took := runToExit(t, 40*time.Second, tc.env, tc.b.runArgs(t, out, tc.args...)...)
			t.Logf("exit status %d after %s: %s", code, took.Round(time.Millisecond), errorLine(output))
			if code != 1 || !strings.Contains(output, tc.want) {
				t.Errorf("exit status %d, output:\n%s\nwant status 1 and %q", code, tail(output, 2000), tc.want)
			}
			if took > kafkaCheckTimeout {
				t.Errorf("took %s, more than the start-up check's %s", took, kafkaCheckTimeout)
			}
			if strings.Contains(output, wrong) || strings.Contains(output, tc.b.pass) {
				t.Error("the output shows a password")
			}
		})
	}
}

// run into ClickHouse's secure port as the test user, with its password
// from the environment: every row lands; with a wrong password, run stops
// at once with status 1 and says the user was refused.
func TestClickHouseTLSAndPassword(t *testing.T) {
	sec := chtest.Secure(t)
	binary(t)
	user, pass := testsecrets.Get(t, testsecrets.ClickHouseUser), testsecrets.Get(t, testsecrets.ClickHousePassword)
	broker := fakeKafka(t, 2, activity)
	s := newScenario(t, broker.ListenAddrs(), workload.Config{Users: 200, Days: 2, Partitions: 2, Seed: 3})
	enginetest.Produce(t, s.brokers, activity, s.recs)
	args := func(extra ...string) []string {
		return append([]string{"run", "--brokers", s.brokers[0], "--topic", activity, "--state-dir", t.TempDir(),
			"--clickhouse-addr", sec.Addr, "--clickhouse-database", s.db, "--clickhouse-tls", "--clickhouse-tls-ca-file", sec.CAFile,
			"--clickhouse-user", user, "--checkpoint-interval", "200ms", "--log-level", "warn", "--metrics-addr", "0"}, extra...)
	}
	t.Setenv(clickhousePasswordEnv, pass)
	if _, errOut, err := runCLI(t, nil, args("--until-caught-up")...); err != nil {
		t.Fatalf("run: %v\n%s", err, errOut)
	}
	s.check(t)

	wrong := testsecrets.Get(t, testsecrets.WrongPassword)
	code, output, took := runToExit(t, 30*time.Second, []string{clickhousePasswordEnv + "=" + wrong}, args()...)
	t.Logf("exit status %d after %s: %s", code, took.Round(time.Millisecond), errorLine(output))
	if want := fmt.Sprintf("ClickHouse refused user %q: wrong password", user); code != 1 || !strings.Contains(output, want) {
		t.Errorf("exit status %d, output:\n%s\nwant status 1 and %q", code, tail(output, 2000), want)
	}
	if strings.Contains(output, wrong) || strings.Contains(output, pass) {
		t.Error("the output shows a password")
	}
}

// A whole processor with both passwords (from the environment, then from
// files) and debug logs, its /metrics, config check and the help: no output
// holds a password.
func TestNoPasswordInOutput(t *testing.T) {
	sec := chtest.Secure(t)
	chUser, chPass := testsecrets.Get(t, testsecrets.ClickHouseUser), testsecrets.Get(t, testsecrets.ClickHousePassword)
	b := newSecureBroker(t, brokerOpts{mechanisms: []string{"SCRAM-SHA-512"}, tls: true})
	dir := t.TempDir()
	db := chtest.FreshDatabase(t, chtest.Addr(t))
	kafkaFilePass := testsecrets.Get(t, testsecrets.KafkaFilePassword)
	common := []string{"--brokers", b.c.ListenAddrs()[0], "--topic", activity,
		"--kafka-tls", "--kafka-tls-ca-file", b.ca.WriteCA(t, dir, "ca.pem"), "--kafka-sasl-mechanism", "SCRAM-SHA-512",
		"--clickhouse-addr", sec.Addr, "--clickhouse-database", db, "--clickhouse-tls", "--clickhouse-tls-ca-file", sec.CAFile,
		"--clickhouse-user", chUser, "--log-level", "debug", "--log-format", "text"}
	fromEnv := []string{kafkaPasswordEnv + "=" + b.pass, clickhousePasswordEnv + "=" + chPass}
	fromFiles := []string{"--kafka-password-file", writeTemp(t, "kafka-pw", []byte(kafkaFilePass+"\n")),
		"--clickhouse-password-file", writeTemp(t, "ch-pw", []byte(chPass+"\n"))}
	var outputs []string

	// The long-running processor, passwords from the environment; its
	// /metrics once ready; SIGTERM.
	port := freePort(t)
	p := start(t, "run (env)", fromEnv, append([]string{"run", "--state-dir", t.TempDir(), "--checkpoint-interval", "200ms",
		"--metrics-addr", fmt.Sprintf("127.0.0.1:%d", port), "--kafka-user", b.user}, common...)...)
	began := time.Now()
	outputs = append(outputs, waitReadyAndScrape(t, p, port))
	t.Logf("ready after %s", time.Since(began))
	stopGracefully(t, p, 30*time.Second)
	t.Logf("stopped after %s", time.Since(began))
	outputs = append(outputs, p.out.String())

	// --until-caught-up, passwords from files; a group of its own (the
	// first process's static membership outlives it by a session timeout).
	code, out, took := runToExit(t, 60*time.Second, nil, append(append([]string{"run", "--state-dir", t.TempDir(), "--until-caught-up", "--group", "second",
		"--metrics-addr", "0", "--kafka-user", b.user + "-file"}, common...), fromFiles...)...)
	if code != 0 {
		t.Fatalf("run --until-caught-up with password files: exit status %d:\n%s", code, tail(out, 3000))
	}
	outputs = append(outputs, out)
	t.Logf("until-caught-up took %s", took)

	// config check both ways, and the help.
	for _, c := range []struct {
		env  []string
		args []string
	}{
		{fromEnv, append([]string{"config", "check", "--kafka-user", b.user}, common...)},
		{nil, append(append([]string{"config", "check", "--kafka-user", b.user}, common...), fromFiles...)},
		{fromEnv, []string{"run", "--help"}},
		{fromEnv, []string{"config", "check", "--help"}},
		{fromEnv, []string{"--help"}},
	} {
		code, out, _ := runToExit(t, 30*time.Second, c.env, c.args...)
		if code != 0 {
			t.Fatalf("%v: exit status %d:\n%s", c.args, code, tail(out, 3000))
		}
		outputs = append(outputs, out)
	}
	if !strings.Contains(outputs[0], "firstseen_") || !strings.Contains(outputs[1], "connection security") {
		t.Fatalf("the metrics or the debug logs are missing:\n%s\n%s", tail(outputs[0], 500), tail(outputs[1], 2000))
	}
	for i, o := range outputs {
		for _, pw := range testsecrets.Passwords(t) {
			if strings.Contains(o, pw) {
				t.Errorf("output %d holds a test password", i)
			}
		}
	}
}

// waitReadyAndScrape waits until the processor is ready and returns its
// /metrics page.
func waitReadyAndScrape(t *testing.T, p *proc, port int) string {
	t.Helper()
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	deadline := time.Now().Add(60 * time.Second)
	for {
		if p.exited() || time.Now().After(deadline) {
			t.Fatalf("%s not ready (exited %v: %v):\n%s", p.name, p.exited(), p.err, tail(p.out.String(), 3000))
		}
		resp, err := http.Get(base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Every command that talks to Kafka gets in through SCRAM over TLS with a
// client certificate, with all its clients (a client without them would be
// refused): generate, produce, bootstrap (from a file and from a ClickHouse
// query over TLS with the test user), and run with --repartition.
func TestEveryCommandThroughSASLAndTLS(t *testing.T) {
	b := newSecureBroker(t, brokerOpts{mechanisms: []string{"SCRAM-SHA-512"}, tls: true, clientCert: true})
	dir := t.TempDir()
	cert, key := testcerts.WritePair(t, b.ca.Client(t, "firstseen"), dir, "client")
	kafka := []string{"--brokers", b.c.ListenAddrs()[0], "--kafka-tls", "--kafka-tls-ca-file", b.ca.WriteCA(t, dir, "ca.pem"),
		"--kafka-tls-cert-file", cert, "--kafka-tls-key-file", key, "--kafka-sasl-mechanism", "SCRAM-SHA-512", "--kafka-user", b.user}
	t.Setenv(kafkaPasswordEnv, b.pass)
	cli := func(args ...string) string {
		t.Helper()
		out, errOut, err := runCLI(t, nil, append(args, kafka...)...)
		if err != nil {
			t.Fatalf("%s: %v\n%s", args[0], err, tail(errOut, 3000))
		}
		return out
	}

	cli("generate", "--topic", "generated", "--users", "50", "--days", "1")
	dump := writeTemp(t, "dump.jsonl", []byte(`{"uuid":"3f1c2b9e-8a47-4c1e-9d2f-0b6a5e4c3d21","event_time":1767225600123}`+"\n"))
	if out := cli("produce", "--topic", activity, dump, "--log-level", "error"); !strings.Contains(out, "1") {
		t.Errorf("produce: %s", out)
	}
	users := writeTemp(t, "users.csv", []byte("uuid,first_seen\n3f1c2b9e-8a47-4c1e-9d2f-0b6a5e4c3d21,2025-01-01T00:00:00Z\n"))
	cli("bootstrap", "--topic", activity, "--group", "boot", users, "--log-level", "error")

	if sec, ok := secureClickHouse(t); ok {
		t.Setenv(clickhousePasswordEnv, testsecrets.Get(t, testsecrets.ClickHousePassword))
		cli("bootstrap", "--topic", activity, "--group", "boot", "--log-level", "error",
			"--users-query", "SELECT '4f1c2b9e-8a47-4c1e-9d2f-0b6a5e4c3d21', toDateTime('2025-01-02 00:00:00')",
			"--clickhouse-addr", sec.Addr, "--clickhouse-tls", "--clickhouse-tls-ca-file", sec.CAFile,
			"--clickhouse-user", testsecrets.Get(t, testsecrets.ClickHouseUser))
	}

	// --repartition: the repartitioner's transactional group client too.
	port := freePort(t)
	p := start(t, "run --repartition", []string{kafkaPasswordEnv + "=" + b.pass}, append([]string{"run", "--topic", activity,
		"--group", "rep", "--repartition", "--state-dir", t.TempDir(), "--sink", "file", "--sink-path", filepath.Join(dir, "rows"),
		"--checkpoint-interval", "200ms", "--metrics-addr", fmt.Sprintf("127.0.0.1:%d", port), "--log-format", "json"}, kafka...)...)
	waitReadyAndScrape(t, p, port)
	stopGracefully(t, p, 30*time.Second)

	// A replica of the bootstrapped group on an empty state directory
	// restores its partitions from the changelog: the restore's client.
	restored := filepath.Join(dir, "restored")
	cli("run", "--topic", activity, "--group", "boot", "--state-dir", t.TempDir(), "--until-caught-up",
		"--sink", "file", "--sink-path", restored, "--metrics-addr", "0", "--log-level", "error")
	lines, err := filesink.ReadDir(restored)
	if err != nil {
		t.Fatal(err)
	}
	if want := enginetest.ValidCount(b.want) + 1; len(lines) != want { // + the produced record
		t.Errorf("%d rows, want %d", len(lines), want)
	}
}

// secureClickHouse is the test server's secure port, when there is one
// (the Kafka tests do not need it otherwise).
func secureClickHouse(t *testing.T) (chtest.SecureServer, bool) {
	var sec chtest.SecureServer
	ok := t.Run("clickhouse", func(t *testing.T) { sec = chtest.Secure(t) })
	return sec, ok && sec.Addr != ""
}

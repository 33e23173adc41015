package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/pflag"
	"github.com/twmb/franz-go/pkg/kerr"

	"github.com/firstseen/firstseen/internal/testsecrets"
)

// checkConfig runs 'config check' with args and returns its standard
// output, standard error and error.
func checkConfig(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	return runCLI(t, nil, append([]string{"config", "check"}, args...)...)
}

// effective reads a flag's value and source from config check's output.
func effective(t *testing.T, out, flag string) (value, source string) {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(flag) + `: (.*?)\s+# (.*)$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("config check does not show %s:\n%s", flag, out)
	}
	return m[1], m[2]
}

// Precedence: a flag on the command line, then its variable, then the
// config file, then the default.
func TestConfigPrecedence(t *testing.T) {
	cases := []struct {
		name             string
		flag, env, file  string // "" is not set
		want, wantSource string
	}{
		{"default", "", "", "", "10m0s", "default"},
		{"file", "", "", "3m", "3m0s", "file"},
		{"env", "", "4m", "", "4m0s", "env FIRSTSEEN_TOLERANCE"},
		{"env over file", "", "4m", "3m", "4m0s", "env FIRSTSEEN_TOLERANCE"},
		{"flag over file", "5m", "", "3m", "5m0s", "flag"},
		{"flag over env", "5m", "4m", "", "5m0s", "flag"},
		{"flag over env and file", "5m", "4m", "3m", "5m0s", "flag"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"--topic", "t"}
			if tc.flag != "" {
				args = append(args, "--tolerance", tc.flag)
			}
			if tc.env != "" {
				t.Setenv("FIRSTSEEN_TOLERANCE", tc.env)
			}
			if tc.file != "" {
				args = append(args, "--config", writeTemp(t, "c.yaml", []byte("tolerance: "+tc.file+"\n")))
			}
			out, errOut, err := checkConfig(t, args...)
			if err != nil {
				t.Fatalf("config check: %v\n%s", err, errOut)
			}
			if v, src := effective(t, out, "tolerance"); v != tc.want || src != tc.wantSource {
				t.Errorf("tolerance = %s from %s, want %s from %s", v, src, tc.want, tc.wantSource)
			}
		})
	}
}

// The config file comes from --config or FIRSTSEEN_CONFIG, --config
// winning; its keys are flag names, lists are joined with commas, and
// booleans and numbers are parsed as on the command line.
func TestConfigFileFromEnvironment(t *testing.T) {
	byEnv := writeTemp(t, "env.yaml", []byte("topic: from-env-file\n"))
	byFlag := writeTemp(t, "flag.yaml", []byte(`# firstseen
topic: activity
brokers: [kafka-1:9092, kafka-2:9092]
until-caught-up: true
buffer-mib: 64
checkpoint-interval: 2s
dlq-topic: ""
`))
	t.Setenv("FIRSTSEEN_CONFIG", byEnv)
	out, errOut, err := checkConfig(t)
	if err != nil {
		t.Fatalf("config check: %v\n%s", err, errOut)
	}
	if v, src := effective(t, out, "topic"); v != "from-env-file" || src != "file" {
		t.Errorf("topic = %s from %s, want from-env-file from the file of FIRSTSEEN_CONFIG", v, src)
	}
	out, errOut, err = checkConfig(t, "--config", byFlag)
	if err != nil {
		t.Fatalf("config check: %v\n%s", err, errOut)
	}
	for flag, want := range map[string]string{"topic": "activity", "brokers": "kafka-1:9092,kafka-2:9092",
		"until-caught-up": "true", "buffer-mib": "64", "checkpoint-interval": "2s", "dlq-topic": `""`} {
		if v, src := effective(t, out, flag); v != want || src != "file" {
			t.Errorf("%s = %s from %s, want %s from file", flag, v, src, want)
		}
	}
	if v, src := effective(t, out, "config"); v != byFlag || src != "flag" {
		t.Errorf("config = %s from %s, want %s from flag", v, src, byFlag)
	}
}

// Every problem of the file is reported, each with the file, the line and
// the key: an unknown key (with the closest flag), a flag of another
// command, a bad value, a key without a value, a password.
func TestConfigFileProblems(t *testing.T) {
	file := writeTemp(t, "bad.yaml", []byte(`topic: activity
tolerence: 5m
checkpoint-interval: 5x
users: 100
clickhouse_addr: ch:9000
dlq-topic:
clickhouse-password: not-shown-7
`))
	_, err := execute(t, "run", "--config", file)
	var ue usageError
	if err == nil || !errors.As(err, &ue) {
		t.Fatalf("run with a bad config file: %v, want a usage error", err)
	}
	msg := err.Error()
	for _, want := range []string{
		"6 problems",
		file + `:2: unknown key "tolerence": not a flag of firstseen run (did you mean tolerance?)`,
		file + `:3: checkpoint-interval: invalid argument "5x"`,
		file + ":4: users is a flag of firstseen demo, firstseen generate, not of firstseen run",
		file + `:5: unknown key "clickhouse_addr": not a flag of firstseen run (did you mean clickhouse-addr?)`,
		file + ":6: dlq-topic: has no value",
		file + ":7: clickhouse-password: passwords are not read from the config file: set FIRSTSEEN_CLICKHOUSE_PASSWORD",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("the error lacks %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "not-shown-7") {
		t.Errorf("the error shows the password:\n%s", msg)
	}

	// A key for a flag that this command does not take, and a file that
	// is not a mapping.
	file = writeTemp(t, "run.yaml", []byte("topic: activity\nclickhouse-addr: ch:9000\n"))
	_, err = execute(t, "produce", "--config", file, "-")
	if err == nil || !strings.Contains(err.Error(), "clickhouse-addr is a flag of firstseen bootstrap, firstseen demo, firstseen run, not of firstseen produce") {
		t.Errorf("produce with run's config file: %v", err)
	}
	file = writeTemp(t, "list.yaml", []byte("- topic\n"))
	if _, err = execute(t, "run", "--config", file); err == nil || !strings.Contains(err.Error(), "want a mapping of flag names to values") {
		t.Errorf("a list as the config file: %v", err)
	}
	if _, err = execute(t, "run", "--config", filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !strings.Contains(err.Error(), "--config: open") {
		t.Errorf("a missing config file: %v", err)
	}
}

// config check lists every problem of flags, variables and file at once,
// exits with status 2 (a usage error), and still prints the configuration.
func TestConfigCheckListsEveryProblem(t *testing.T) {
	t.Setenv("FIRSTSEEN_MAX_FUTURE", "soon")
	file := writeTemp(t, "c.yaml", []byte("tolerance: 0s\nkafka-tls-ca-file: /nonexistent/ca.pem\n"))
	out, _, err := checkConfig(t, "--config", file, "--timezone", "Mars/Olympus", "--sink", "file",
		"--kafka-tls", "--kafka-sasl-mechanism", "SCRAM-SHA-256", "--clickhouse-password-file", "/nonexistent/pw")
	var ue usageError
	if err == nil || !errors.As(err, &ue) {
		t.Fatalf("config check of a bad configuration: %v, want a usage error (exit status 2)", err)
	}
	msg := err.Error()
	for _, want := range []string{
		`invalid FIRSTSEEN_MAX_FUTURE="soon" (for --max-future)`,
		"--topic is required",
		"--tolerance 0s must be above 0",
		`--timezone "Mars/Olympus" is not an IANA time zone`,
		"--kafka-tls-ca-file: open /nonexistent/ca.pem",
		"--kafka-sasl-mechanism SCRAM-SHA-256 needs --kafka-user",
		"needs a password: set FIRSTSEEN_KAFKA_PASSWORD or give --kafka-password-file",
		"--sink file needs --sink-path",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("the problems lack %q:\n%s", want, msg)
		}
	}
	if v, src := effective(t, out, "timezone"); v != "Mars/Olympus" || src != "flag" {
		t.Errorf("timezone = %s from %s in the printed configuration", v, src)
	}
	// run reports the same problems at once, not the first only.
	_, err = execute(t, "run", "--config", file, "--timezone", "Mars/Olympus")
	if err == nil || !strings.Contains(err.Error(), "--topic is required") || !strings.Contains(err.Error(), "--tolerance 0s") ||
		!strings.Contains(err.Error(), "Mars/Olympus") || !strings.Contains(err.Error(), "FIRSTSEEN_MAX_FUTURE") {
		t.Errorf("run: %v, want every problem", err)
	}
}

// A valid configuration: exit 0, every run flag printed with its source,
// and the passwords only as set or not, with where from.
func TestConfigCheckMasksSecrets(t *testing.T) {
	kafkaPw := testsecrets.Get(t, testsecrets.KafkaPassword)
	chPw := testsecrets.Get(t, testsecrets.ClickHousePassword)
	pwFile := writeTemp(t, "ch-password", []byte(chPw+"\n"))
	t.Setenv(kafkaPasswordEnv, kafkaPw)
	out, errOut, err := checkConfig(t, "--topic", "activity", "--kafka-tls", "--kafka-sasl-mechanism", "scram-sha-512",
		"--kafka-user", "firstseen", "--clickhouse-password-file", pwFile)
	if err != nil {
		t.Fatalf("config check: %v\n%s", err, errOut)
	}
	if strings.Contains(out+errOut, kafkaPw) || strings.Contains(out+errOut, chPw) {
		t.Fatal("config check shows a password")
	}
	for _, want := range []string{"#   kafka: set, from FIRSTSEEN_KAFKA_PASSWORD", "#   clickhouse: set, from --clickhouse-password-file"} {
		if !strings.Contains(out, want) {
			t.Errorf("config check lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(errOut, "the configuration is valid") {
		t.Errorf("stderr: %q", errOut)
	}
	// Every visible flag of run is there.
	runCmd := newRunCmd()
	runCmd.Flags().VisitAll(func(f *pflag.Flag) {
		if !f.Hidden && f.Name != "help" && !strings.Contains(out, "\n"+f.Name+": ") {
			t.Errorf("config check does not show --%s", f.Name)
		}
	})
}

// --kafka-password and --clickhouse-password are refused with a message
// that says what to do, and never repeats the value; the variables still
// give the passwords.
func TestPasswordFlagsRefused(t *testing.T) {
	wrong := testsecrets.Get(t, testsecrets.WrongPassword)
	for _, flag := range []string{"kafka-password", "clickhouse-password"} {
		for _, args := range [][]string{{"--" + flag, wrong}, {"--" + flag + "=" + wrong}} {
			_, err := execute(t, append([]string{"run", "--topic", "t"}, args...)...)
			var ue usageError
			if err == nil || !errors.As(err, &ue) || !strings.Contains(err.Error(), "--"+flag+" is not accepted") ||
				!strings.Contains(err.Error(), envName(flag)) || !strings.Contains(err.Error(), "--"+flag+"-file") {
				t.Errorf("--%s on the command line: %v", flag, err)
			}
			if err != nil && strings.Contains(err.Error(), wrong) {
				t.Errorf("the error of --%s shows the password", flag)
			}
		}
	}
	t.Setenv(clickhousePasswordEnv, wrong)
	if _, errOut, err := checkConfig(t, "--topic", "t"); err != nil {
		t.Errorf("%s set: %v\n%s", clickhousePasswordEnv, err, errOut)
	}
	out, _ := execute(t, "run", "--help")
	if strings.Contains(out, "--clickhouse-password ") || strings.Contains(out, "--kafka-password ") {
		t.Errorf("run --help shows a refused password flag:\n%s", out)
	}
}

// Password files: the trailing newline is dropped; an empty or unreadable
// file, or a password given twice, is a problem that says which.
func TestReadPassword(t *testing.T) {
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const env = "FIRSTSEEN_TEST_READ_PASSWORD"
	for _, tc := range []struct {
		name, env, file string
		want, problem   string
	}{
		{"none", "", "", "", ""},
		{"env", "pw-env", "", "pw-env", ""},
		{"file", "", file("lf", "pw-file\n"), "pw-file", ""},
		{"file crlf", "", file("crlf", "pw-file\r\n"), "pw-file", ""},
		{"file without newline", "", file("bare", "pw file "), "pw file ", ""},
		{"empty file", "", file("empty", "\n"), "", "is empty"},
		{"missing file", "", filepath.Join(dir, "missing"), "", "cannot read the password"},
		{"both", "pw-env", file("both", "pw"), "", "given twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env != "" {
				t.Setenv(env, tc.env)
			}
			s, problems := readPassword(env, "x-password-file", tc.file)
			got := strings.Join(problems, "; ")
			if s.value != tc.want || (tc.problem == "") != (got == "") || !strings.Contains(got, tc.problem) {
				t.Errorf("got %q, problems %q; want %q, a problem with %q", s.value, got, tc.want, tc.problem)
			}
		})
	}
	unreadable := file("unreadable", "pw")
	if err := os.Chmod(unreadable, 0); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() != 0 { // root reads it anyway
		if _, problems := readPassword(env, "x-password-file", unreadable); len(problems) != 1 || !strings.Contains(problems[0], "permission denied") {
			t.Errorf("unreadable file: %q", problems)
		}
	}
}

// The TLS and SASL flags: what needs what, and files that are not
// certificates.
func TestSecurityFlagProblems(t *testing.T) {
	notPEM := writeTemp(t, "not.pem", []byte("hello\n"))
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--kafka-tls-ca-file", notPEM}, "--kafka-tls-ca-file is set but --kafka-tls is not"},
		{[]string{"--kafka-tls", "--kafka-tls-ca-file", notPEM}, "holds no PEM certificate"},
		{[]string{"--kafka-tls", "--kafka-tls-cert-file", notPEM}, "--kafka-tls-cert-file and --kafka-tls-key-file go together"},
		{[]string{"--kafka-tls", "--kafka-tls-cert-file", notPEM, "--kafka-tls-key-file", notPEM}, "--kafka-tls-cert-file " + notPEM},
		{[]string{"--kafka-sasl-mechanism", "GSSAPI"}, `--kafka-sasl-mechanism "GSSAPI": want PLAIN, SCRAM-SHA-256, SCRAM-SHA-512`},
		{[]string{"--kafka-user", "bob"}, "--kafka-user and the Kafka password need --kafka-sasl-mechanism"},
		{[]string{"--clickhouse-tls-server-name", "ch"}, "--clickhouse-tls-server-name is set but --clickhouse-tls is not"},
		{[]string{"--clickhouse-tls", "--clickhouse-tls-ca-file", "/nonexistent"}, "--clickhouse-tls-ca-file: open /nonexistent"},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			_, err := execute(t, append([]string{"run", "--topic", "t"}, tc.args...)...)
			var ue usageError
			if err == nil || !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want a usage error with %q", err, tc.want)
			}
		})
	}
}

// The start-up check's errors, for the answers a real Kafka gives (kfake
// closes the connection instead, which the SASL tests cover).
func TestKafkaAccessError(t *testing.T) {
	f := &pipelineFlags{brokers: []string{"kafka-1:9093"}}
	f.sec.saslMechanism, f.sec.kafkaUser = "SCRAM-SHA-256", "firstseen"
	for _, tc := range []struct {
		err, sasl error
		want      string
	}{
		{kerr.SaslAuthenticationFailed, nil, `Kafka authentication failed for user "firstseen" with SCRAM-SHA-256 at kafka-1:9093: SASL_AUTHENTICATION_FAILED`},
		{kerr.UnsupportedSaslMechanism, nil, "Kafka at kafka-1:9093 does not enable the SASL mechanism SCRAM-SHA-256"},
		{io.EOF, io.EOF, `Kafka authentication failed for user "firstseen" with SCRAM-SHA-256 at kafka-1:9093: the broker closed the connection during authentication`},
		{fmt.Errorf("unable to dial: %w", x509.UnknownAuthorityError{}), nil, "Kafka TLS handshake with kafka-1:9093 failed"},
		{context.DeadlineExceeded, nil, ""},
		{errors.New("dial tcp: connection refused"), nil, ""},
	} {
		err := f.kafkaAccessError(tc.err, tc.sasl)
		if (tc.want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("kafkaAccessError(%v, %v) = %v, want %q", tc.err, tc.sasl, err, tc.want)
		}
	}
}

// A secret printed by mistake shows where it came from, not its value.
func TestSecretHidesItsValue(t *testing.T) {
	s := secret{value: "v4lue", from: "FIRSTSEEN_X"}
	var b strings.Builder
	slog.New(slog.NewTextHandler(&b, nil)).Info("x", "s", s)
	for _, out := range []string{fmt.Sprint(s), fmt.Sprintf("%v %+v %#v %s", s, s, s, s), b.String()} {
		if strings.Contains(out, "v4lue") || !strings.Contains(out, "FIRSTSEEN_X") {
			t.Errorf("printed as %q", out)
		}
	}
}

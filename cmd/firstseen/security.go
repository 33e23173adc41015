package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/spf13/pflag"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/firstseen/firstseen/engine"
	"github.com/firstseen/firstseen/internal/tlserr"
	"github.com/firstseen/firstseen/sinks/clickhouse"
)

// Security: TLS for Kafka and ClickHouse, SASL for Kafka, and the two
// passwords. A password comes only from its environment variable or from a
// file named by a flag, never from the command line or the config file,
// and is never printed.

// Where the passwords come from.
const (
	kafkaPasswordEnv      = envPrefix + "KAFKA_PASSWORD"
	clickhousePasswordEnv = envPrefix + "CLICKHOUSE_PASSWORD"
)

// The SASL mechanisms --kafka-sasl-mechanism takes.
var saslMechanisms = []string{"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}

// securityFlags are the TLS, SASL and password flags of Kafka and
// ClickHouse, and what they resolve to once checked.
type securityFlags struct {
	kafkaTLS      tlsFlags
	saslMechanism string
	kafkaUser     string
	kafkaPassFile string
	kafkaPassword secret
	kafkaPassFlag refusedPassword
	chTLS         tlsFlags
	chPassFile    string
	chPassword    secret
	chPassFlag    refusedPassword
	kafkaOpts     []kgo.Opt // TLS and SASL options for every Kafka client
}

// tlsFlags are the TLS flags of one service: --<prefix>-tls and
// --<prefix>-tls-*.
type tlsFlags struct {
	prefix     string // "kafka" or "clickhouse"
	enabled    bool
	caFile     string
	certFile   string
	keyFile    string
	serverName string
	config     *tls.Config // built by check when enabled
}

// secret is a password and where it came from: its environment variable or
// its file flag ("" when none was given).
type secret struct {
	value string
	from  string
}

// String hides the value when a secret is printed by mistake.
func (s secret) String() string { return "secret(from " + cmp.Or(s.from, "nowhere") + ")" }

// GoString hides the value from %#v.
func (s secret) GoString() string { return s.String() }

// LogValue hides the value from slog.
func (s secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// refusedPassword is the value of --kafka-password and
// --clickhouse-password: accepted by the parser, so that the check can say
// what to do instead, and never stored.
type refusedPassword struct{ given bool }

func (r *refusedPassword) String() string { return "" }

// Set records that the flag was given; the value is dropped at once.
func (r *refusedPassword) Set(string) error { r.given = true; return nil }

// Type implements pflag.Value.
func (r *refusedPassword) Type() string { return "string" }

// addKafka registers the Kafka TLS, SASL and password flags.
func (s *securityFlags) addKafka(fs *pflag.FlagSet) {
	s.kafkaTLS.add(fs, "kafka", "the Kafka brokers")
	fs.StringVar(&s.saslMechanism, "kafka-sasl-mechanism", "", "SASL mechanism to authenticate to Kafka with: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (empty: no SASL); "+
		"the password comes from "+kafkaPasswordEnv+" or --kafka-password-file")
	fs.StringVar(&s.kafkaUser, "kafka-user", "", "with --kafka-sasl-mechanism: the SASL user name")
	fs.StringVar(&s.kafkaPassFile, "kafka-password-file", "", "with --kafka-sasl-mechanism: file holding the SASL password (a trailing newline is ignored); or set "+kafkaPasswordEnv)
	fs.Var(&s.kafkaPassFlag, "kafka-password", "refused: use "+kafkaPasswordEnv+" or --kafka-password-file")
	_ = fs.MarkHidden("kafka-password")
}

// addClickHouse registers the ClickHouse TLS and password flags.
func (s *securityFlags) addClickHouse(fs *pflag.FlagSet) {
	fs.StringVar(&s.chPassFile, "clickhouse-password-file", "", "file holding the ClickHouse user's password (a trailing newline is ignored); or set "+clickhousePasswordEnv)
	fs.Var(&s.chPassFlag, "clickhouse-password", "refused: use "+clickhousePasswordEnv+" or --clickhouse-password-file")
	_ = fs.MarkHidden("clickhouse-password")
	s.chTLS.add(fs, "clickhouse", "ClickHouse (its secure native port, usually 9440)")
}

// add registers --<prefix>-tls and its files.
func (t *tlsFlags) add(fs *pflag.FlagSet, prefix, service string) {
	t.prefix = prefix
	p := "--" + prefix + "-tls"
	fs.BoolVar(&t.enabled, prefix+"-tls", false, "connect to "+service+" with TLS")
	fs.StringVar(&t.caFile, prefix+"-tls-ca-file", "", "with "+p+": PEM file of the CA certificates the server's certificate must chain to (default: the system's)")
	fs.StringVar(&t.certFile, prefix+"-tls-cert-file", "", "with "+p+": PEM file of a client certificate, for servers that ask for one (with "+p+"-key-file)")
	fs.StringVar(&t.keyFile, prefix+"-tls-key-file", "", "with "+p+"-cert-file: PEM file of the client certificate's private key")
	fs.StringVar(&t.serverName, prefix+"-tls-server-name", "", "with "+p+": the name the server's certificate must be for (default: the host of the address)")
}

// check reads the TLS files and returns every problem; without problems,
// and with TLS on, config holds the client configuration.
func (t *tlsFlags) check() []string {
	p := "--" + t.prefix + "-tls"
	if !t.enabled {
		var problems []string
		for _, fl := range []struct{ name, v string }{{"-ca-file", t.caFile}, {"-cert-file", t.certFile},
			{"-key-file", t.keyFile}, {"-server-name", t.serverName}} {
			if fl.v != "" {
				problems = append(problems, fmt.Sprintf("%s%s is set but %s is not: add %s to connect with TLS", p, fl.name, p, p))
			}
		}
		return problems
	}
	var problems []string
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.serverName}
	if t.caFile != "" {
		pool, err := loadCAs(t.caFile)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s-ca-file: %v", p, err))
		}
		cfg.RootCAs = pool
	}
	switch {
	case (t.certFile == "") != (t.keyFile == ""):
		problems = append(problems, fmt.Sprintf("%s-cert-file and %s-key-file go together: give both or neither", p, p))
	case t.certFile != "":
		cert, err := tls.LoadX509KeyPair(t.certFile, t.keyFile)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s-cert-file %s with %s-key-file %s: %v", p, t.certFile, p, t.keyFile, err))
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	if len(problems) == 0 {
		t.config = cfg
	}
	return problems
}

// loadCAs reads a PEM file of CA certificates.
func loadCAs(file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s holds no PEM certificate", file)
	}
	return pool, nil
}

// readPassword returns the password of env or, failing that, of the file
// --fileFlag names, with its trailing newline removed. Both at once is a
// problem, and so are an unreadable or empty file; neither is no password.
func readPassword(env, fileFlag, file string) (secret, []string) {
	v, inEnv := os.LookupEnv(env)
	inEnv = inEnv && v != ""
	switch {
	case inEnv && file != "":
		return secret{}, []string{fmt.Sprintf("the password is given twice, in %s and by --%s: give one", env, fileFlag)}
	case inEnv:
		return secret{value: v, from: env}, nil
	case file == "":
		return secret{}, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return secret{}, []string{fmt.Sprintf("--%s: cannot read the password: %v", fileFlag, err)}
	}
	pw := strings.TrimRight(string(b), "\r\n")
	if pw == "" {
		return secret{}, []string{fmt.Sprintf("--%s %s is empty: it should hold the password", fileFlag, file)}
	}
	return secret{value: pw, from: "--" + fileFlag}, nil
}

// refused returns the problem of a password given on the command line or
// in the config file.
func (r *refusedPassword) refused(flag, env string) []string {
	if !r.given {
		return nil
	}
	return []string{fmt.Sprintf("--%s is not accepted: a password on the command line shows in process listings and shell history, "+
		"and the config file does not take one either; set %s or give --%s-file", flag, env, flag)}
}

// checkKafka checks the Kafka TLS and SASL flags, reads the password and
// builds the client options; it returns every problem.
func (s *securityFlags) checkKafka() []string {
	problems := s.kafkaPassFlag.refused("kafka-password", kafkaPasswordEnv)
	problems = append(problems, s.kafkaTLS.check()...)
	pw, pwProblems := readPassword(kafkaPasswordEnv, "kafka-password-file", s.kafkaPassFile)
	problems = append(problems, pwProblems...)
	s.kafkaPassword = pw
	problems = append(problems, s.saslProblems(len(pwProblems) > 0)...)
	if len(problems) > 0 {
		return problems
	}
	s.kafkaOpts = nil
	if s.kafkaTLS.config != nil {
		s.kafkaOpts = append(s.kafkaOpts, kgo.DialTLSConfig(s.kafkaTLS.config))
	}
	if m := s.mechanism(); m != nil {
		s.kafkaOpts = append(s.kafkaOpts, kgo.SASL(m))
	}
	return nil
}

// saslProblems checks the mechanism, the user and that a password was
// given (unless reading it failed: passwordFailed); it normalizes the
// mechanism's name.
func (s *securityFlags) saslProblems(passwordFailed bool) []string {
	mech, err := normalizeMechanism(s.saslMechanism)
	switch {
	case err != nil:
		return []string{err.Error()}
	case mech == "":
		if s.kafkaUser != "" || s.kafkaPassword.from != "" {
			return []string{"--kafka-user and the Kafka password need --kafka-sasl-mechanism (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"}
		}
		return nil
	}
	s.saslMechanism = mech
	var problems []string
	if s.kafkaUser == "" {
		problems = append(problems, "--kafka-sasl-mechanism "+mech+" needs --kafka-user")
	}
	if s.kafkaPassword.from == "" && !passwordFailed {
		problems = append(problems, "--kafka-sasl-mechanism "+mech+" needs a password: set "+kafkaPasswordEnv+" or give --kafka-password-file")
	}
	return problems
}

// normalizeMechanism returns the SASL mechanism in upper case, or an
// error naming the ones there are.
func normalizeMechanism(m string) (string, error) {
	m = strings.ToUpper(strings.TrimSpace(m))
	if m == "" {
		return "", nil
	}
	for _, ok := range saslMechanisms {
		if m == ok {
			return m, nil
		}
	}
	return "", fmt.Errorf("--kafka-sasl-mechanism %q: want %s (or empty for none)", m, strings.Join(saslMechanisms, ", "))
}

// mechanism is the franz-go SASL mechanism of the checked flags, or nil.
func (s *securityFlags) mechanism() sasl.Mechanism {
	user, pass := s.kafkaUser, s.kafkaPassword.value
	switch s.saslMechanism {
	case "PLAIN":
		return plain.Auth{User: user, Pass: pass}.AsMechanism()
	case "SCRAM-SHA-256":
		return scram.Auth{User: user, Pass: pass}.AsSha256Mechanism()
	case "SCRAM-SHA-512":
		return scram.Auth{User: user, Pass: pass}.AsSha512Mechanism()
	}
	return nil
}

// clickhouseConfig is the sink's configuration from the checked flags.
func (f *pipelineFlags) clickhouseConfig() clickhouse.Config {
	return clickhouse.Config{Addr: splitList(f.chAddr), Database: f.chDatabase, Table: f.chTable, User: f.chUser,
		Password: f.sec.chPassword.value, Compression: f.chCompression, TLS: f.sec.chTLS.config}
}

// kafkaWarnings are settings that work but are unsafe.
func (s *securityFlags) kafkaWarnings() []string {
	if s.saslMechanism == "PLAIN" && !s.kafkaTLS.enabled {
		return []string{"--kafka-sasl-mechanism PLAIN without --kafka-tls sends the Kafka password in clear text"}
	}
	return nil
}

// clickhouseWarnings are likely mistakes: ClickHouse's usual secure port
// without TLS (the server resets the connection, which looks like an
// outage and is retried), or TLS on its usual plain port.
func (f *pipelineFlags) clickhouseWarnings() []string {
	for _, a := range splitList(f.chAddr) {
		_, port, _ := net.SplitHostPort(a)
		switch {
		case port == "9440" && !f.sec.chTLS.enabled:
			return []string{fmt.Sprintf("--clickhouse-addr %s is ClickHouse's usual secure port, but --clickhouse-tls is off", a)}
		case port == "9000" && f.sec.chTLS.enabled:
			return []string{fmt.Sprintf("--clickhouse-tls is on, but --clickhouse-addr %s is ClickHouse's usual plain port (the secure one is usually 9440)", a)}
		}
	}
	return nil
}

// checkClickHouse checks the ClickHouse TLS flags and reads the password;
// it returns every problem.
func (s *securityFlags) checkClickHouse() []string {
	problems := s.chPassFlag.refused("clickhouse-password", clickhousePasswordEnv)
	problems = append(problems, s.chTLS.check()...)
	pw, pwProblems := readPassword(clickhousePasswordEnv, "clickhouse-password-file", s.chPassFile)
	s.chPassword = pw
	problems = append(problems, pwProblems...)
	return problems
}

// kafkaCheckTimeout bounds the connection check before a command starts.
const kafkaCheckTimeout = 15 * time.Second

// checkKafkaAccess connects to the brokers with the security options and
// asks for their metadata before anything starts, so that an
// authentication or TLS failure stops the command at once with an error
// that says so, instead of retries that never succeed. Other failures
// (brokers not up yet, a network outage) are only logged: the command then
// goes on and retries as it would have.
func (f *pipelineFlags) checkKafkaAccess(ctx context.Context, log *slog.Logger) error {
	probe := &saslProbe{}
	opts := append([]kgo.Opt{kgo.SeedBrokers(f.brokers...), kgo.WithLogger(engine.KafkaLogger(log)), kgo.WithHooks(probe)},
		f.sec.kafkaOpts...)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return fmt.Errorf("kafka client: %w", err)
	}
	defer cl.Close()
	cctx, cancel := context.WithTimeout(ctx, kafkaCheckTimeout)
	defer cancel()
	_, err = kadm.NewClient(cl).ListBrokers(cctx)
	if err == nil || ctx.Err() != nil {
		return nil
	}
	if cerr := f.kafkaAccessError(err, probe.failure()); cerr != nil {
		return cerr
	}
	log.Warn("kafka: the brokers did not answer the start-up check; going on, retrying", "brokers", strings.Join(f.brokers, ","), "err", err)
	return nil
}

// kafkaAccessError turns an authentication or TLS failure into an error
// that names the user, the mechanism or the brokers; nil for other errors.
// saslErr is the error of the connection's SASL exchange, if it failed.
func (f *pipelineFlags) kafkaAccessError(err, saslErr error) error {
	brokers := strings.Join(f.brokers, ",")
	s := &f.sec
	var firstEOF *kgo.ErrFirstReadEOF
	switch {
	case errors.Is(err, kerr.UnsupportedSaslMechanism):
		return fmt.Errorf("Kafka at %s does not enable the SASL mechanism %s (--kafka-sasl-mechanism): %v", brokers, s.saslMechanism, err)
	case s.saslMechanism != "" && (errors.Is(err, kerr.SaslAuthenticationFailed) || errors.Is(err, kerr.IllegalSaslState) || saslErr != nil):
		cause := err
		if !errors.Is(err, kerr.SaslAuthenticationFailed) && saslErr != nil {
			cause = fmt.Errorf("the broker closed the connection during authentication (%v): wrong password, unknown user, or a mechanism the broker does not enable", saslErr)
		}
		return fmt.Errorf("Kafka authentication failed for user %q with %s at %s: %v", s.kafkaUser, s.saslMechanism, brokers, cause)
	case tlserr.Is(err):
		hint := ""
		if s.kafkaTLS.caFile == "" {
			hint = " (a server certificate from a private CA needs --kafka-tls-ca-file)"
		}
		return fmt.Errorf("Kafka TLS handshake with %s failed: %v%s", brokers, err, hint)
	case errors.As(err, &firstEOF):
		return fmt.Errorf("Kafka at %s closed the connection: %v", brokers, err)
	}
	return nil
}

// saslProbe is a client hook that keeps the first failed read or write of
// a SASL request: a broker that refuses the credentials may close the
// connection instead of answering.
type saslProbe struct {
	mu  sync.Mutex
	err error
}

// SASL request keys.
const (
	keySASLHandshake    = 17
	keySASLAuthenticate = 36
)

// OnBrokerRead implements kgo.HookBrokerRead.
func (p *saslProbe) OnBrokerRead(_ kgo.BrokerMetadata, key int16, _ int, _, _ time.Duration, err error) {
	p.note(key, err)
}

// OnBrokerWrite implements kgo.HookBrokerWrite.
func (p *saslProbe) OnBrokerWrite(_ kgo.BrokerMetadata, key int16, _ int, _, _ time.Duration, err error) {
	p.note(key, err)
}

func (p *saslProbe) note(key int16, err error) {
	if err == nil || (key != keySASLHandshake && key != keySASLAuthenticate) {
		return
	}
	p.mu.Lock()
	if p.err == nil {
		p.err = err
	}
	p.mu.Unlock()
}

func (p *saslProbe) failure() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// logSecurity logs how the command connects, without secrets.
func (s *securityFlags) logSecurity(log *slog.Logger, clickhouse bool) {
	args := []any{"kafka_tls", s.kafkaTLS.enabled, "kafka_sasl", cmp.Or(s.saslMechanism, "none")}
	if s.saslMechanism != "" {
		args = append(args, "kafka_user", s.kafkaUser, "kafka_password_from", s.kafkaPassword.from)
	}
	if clickhouse {
		args = append(args, "clickhouse_tls", s.chTLS.enabled, "clickhouse_password_from", cmp.Or(s.chPassword.from, "none"))
	}
	log.Debug("connection security", args...)
}

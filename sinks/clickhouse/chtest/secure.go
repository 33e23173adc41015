package chtest

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Environment variables read by [Secure].
const (
	EnvSecureAddr     = "FIRSTSEEN_TEST_CLICKHOUSE_SECURE"
	EnvTLSDir         = "FIRSTSEEN_TEST_CLICKHOUSE_TLS_DIR"
	DefaultSecureAddr = "127.0.0.1:9440"
	DefaultTLSDir     = "/tmp/firstseen-clickhouse/tls"
)

// SecureServer is the test server's secure native port (tcp_port_secure,
// set up by `.ci/clickhouse ensure`) and the files of its test CA: the CA
// certificate, and a client certificate it signed.
type SecureServer struct {
	Addr           string
	CAFile         string
	ClientCertFile string
	ClientKeyFile  string
}

// Secure returns the secure port once a TLS handshake with it succeeds,
// trusting the test CA. Otherwise it skips the test, or fails it when
// FIRSTSEEN_REQUIRE_CLICKHOUSE=1.
func Secure(t testing.TB) SecureServer {
	t.Helper()
	Addr(t) // the plain port first: the same server
	s := SecureServer{Addr: os.Getenv(EnvSecureAddr)}
	if s.Addr == "" {
		s.Addr = DefaultSecureAddr
	}
	dir := os.Getenv(EnvTLSDir)
	if dir == "" {
		dir = DefaultTLSDir
	}
	s.CAFile = filepath.Join(dir, "ca.crt")
	s.ClientCertFile = filepath.Join(dir, "client.crt")
	s.ClientKeyFile = filepath.Join(dir, "client.key")
	cfg, err := s.tlsConfig()
	if err == nil {
		var c *tls.Conn
		c, err = tls.DialWithDialer(&netDialer, "tcp", s.Addr, cfg)
		if err == nil {
			_ = c.Close()
		}
	}
	if err != nil {
		if os.Getenv(EnvRequire) == "1" {
			t.Fatalf("ClickHouse's secure port %s is required (%s=1) but no TLS handshake succeeds: %v", s.Addr, EnvRequire, err)
		}
		t.Skipf("no TLS on ClickHouse at %s (%v): run `.ci/clickhouse ensure` or set %s and %s", s.Addr, err, EnvSecureAddr, EnvTLSDir)
	}
	return s
}

// TLSConfig is a client configuration that trusts the test CA.
func (s SecureServer) TLSConfig(t testing.TB) *tls.Config {
	t.Helper()
	cfg, err := s.tlsConfig()
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func (s SecureServer) tlsConfig() (*tls.Config, error) {
	b, err := os.ReadFile(s.CAFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(b)
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

var netDialer = net.Dialer{Timeout: 5 * time.Second}

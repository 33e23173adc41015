package clickhouse

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/firstseen/firstseen/internal/testcerts"
	"github.com/firstseen/firstseen/internal/testsecrets"
	"github.com/firstseen/firstseen/sinks/clickhouse/chtest"
)

// The user and password of .ci/clickhouse's test user.
func testUser(t *testing.T) (user, password string) {
	return testsecrets.Get(t, testsecrets.ClickHouseUser), testsecrets.Get(t, testsecrets.ClickHousePassword)
}

// TLS on the secure port with a user and password: both the query and the
// insert connections (the latter dialled by the sink itself) are TLS, and
// rows are written and read back.
func TestTLSWithPassword(t *testing.T) {
	sec := chtest.Secure(t)
	user, password := testUser(t)
	db := chtest.FreshDatabase(t, chtest.Addr(t))
	s := openSink(t, Config{Addr: []string{sec.Addr}, Database: db, User: user, Password: password, TLS: sec.TLSConfig(t)})
	testWriteReadBack(t, s, db)
	var n uint64
	if err := s.Conn().QueryRow(context.Background(), "SELECT count() FROM system.processes WHERE user = '"+user+"'").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Errorf("the queries do not run as %s", user)
	}
}

// A client certificate signed by the CA the server trusts is accepted;
// one from another CA is refused, at once and for good.
func TestTLSClientCertificate(t *testing.T) {
	sec := chtest.Secure(t)
	user, password := testUser(t)
	cert, err := tls.LoadX509KeyPair(sec.ClientCertFile, sec.ClientKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg := sec.TLSConfig(t)
	cfg.Certificates = []tls.Certificate{cert}
	db := chtest.FreshDatabase(t, chtest.Addr(t))
	openSink(t, Config{Addr: []string{sec.Addr}, Database: db, User: user, Password: password, TLS: cfg})

	other := selfSignedClient(t)
	cfg = sec.TLSConfig(t)
	cfg.Certificates = []tls.Certificate{other}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := Open(ctx, Config{Addr: []string{sec.Addr}, Database: db, User: user, Password: password, TLS: cfg, DialTimeout: 5 * time.Second})
	if err == nil {
		_ = s.Close()
		t.Fatal("a client certificate of an unknown CA was accepted")
	}
	t.Logf("error: %v", err)
	if IsRetryable(err) {
		t.Errorf("IsRetryable(%v) = true, want false", err)
	}
}

// A server certificate from a CA the client does not trust: a clear TLS
// error, not retried.
func TestTLSUntrustedServer(t *testing.T) {
	sec := chtest.Secure(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	s, err := Open(ctx, Config{Addr: []string{sec.Addr}, TLS: &tls.Config{RootCAs: x509.NewCertPool()}, DialTimeout: 5 * time.Second})
	if err == nil {
		_ = s.Close()
		t.Fatal("an untrusted server certificate was accepted")
	}
	t.Logf("error after %v: %v", time.Since(start), err)
	if IsRetryable(err) || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("got %v (retryable %v), want a certificate error that is not retryable", err, IsRetryable(err))
	}
}

// A wrong password for an existing user, over TLS: ClickHouse refuses the
// user, the error says so without the password, and it is not retryable.
func TestWrongPassword(t *testing.T) {
	sec := chtest.Secure(t)
	user, _ := testUser(t)
	wrong := testsecrets.Get(t, testsecrets.WrongPassword)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := Open(ctx, Config{Addr: []string{sec.Addr}, User: user, Password: wrong, TLS: sec.TLSConfig(t)})
	if err == nil {
		_ = s.Close()
		t.Fatal("Open with a wrong password succeeded")
	}
	t.Logf("error: %v", err)
	msg := err.Error()
	if !strings.Contains(msg, `ClickHouse refused user "`+user+`"`) || !strings.Contains(msg, "password") || strings.Contains(msg, wrong) {
		t.Errorf("error %q should say the user was refused, and not show the password", msg)
	}
	if IsRetryable(err) || !IsAuthError(err) {
		t.Errorf("IsRetryable = %v, IsAuthError = %v; want false, true", IsRetryable(err), IsAuthError(err))
	}
}

// selfSignedClient is a client certificate of a CA the server does not
// know.
func selfSignedClient(t *testing.T) tls.Certificate {
	return testcerts.NewCA(t, "some other CA").Client(t, "stranger")
}

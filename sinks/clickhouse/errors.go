package clickhouse

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"

	ch "github.com/ClickHouse/clickhouse-go/v2"

	"github.com/firstseen/firstseen/internal/tlserr"
)

// opError is every error the sink returns: it names the server and what the
// sink was doing, and never shows the password.
type opError struct {
	where    string // "clickhouse host:port"
	op       string
	err      error
	password string
}

func (e *opError) Error() string {
	msg := e.where + ": " + e.op + ": " + e.err.Error()
	if e.password != "" {
		msg = strings.ReplaceAll(msg, e.password, "<password>")
	}
	return msg
}

func (e *opError) Unwrap() error { return e.err }

func (s *Sink) wrap(op string, err error) error {
	if reason := authFailure(err); reason != "" {
		return &authError{where: s.where, user: s.user, reason: reason, err: err, password: s.password}
	}
	return &opError{where: s.where, op: op, err: err, password: s.password}
}

// authCodes are the server error codes of a refused login, and what they
// mean: 18.x-20.x say which part was wrong, newer servers do not.
var authCodes = map[int32]string{
	192: "unknown user",          // UNKNOWN_USER
	193: "wrong password",        // WRONG_PASSWORD
	194: "password required",     // REQUIRED_PASSWORD
	195: "address not allowed",   // IP_ADDRESS_NOT_ALLOWED
	516: "authentication failed", // AUTHENTICATION_FAILED: unknown user or wrong password
}

// authFailure says why the server refused the login, or "" when err is not
// a refused login.
func authFailure(err error) string {
	var ex *ch.Exception
	if errors.As(err, &ex) {
		return authCodes[ex.Code]
	}
	return ""
}

// authError is a refused login: a retry cannot succeed.
type authError struct {
	where    string // "clickhouse host:port"
	user     string
	reason   string
	err      error
	password string
}

func (e *authError) Error() string {
	msg := "ClickHouse refused user " + strconv.Quote(e.user) + ": " + e.reason + " (" + e.where + ": " + e.err.Error() + ")"
	if e.password != "" {
		msg = strings.ReplaceAll(msg, e.password, "<password>")
	}
	return msg
}

func (e *authError) Unwrap() error { return e.err }

// IsAuthError reports whether ClickHouse refused the login: an unknown
// user, a wrong or missing password, or an address the user may not log
// in from.
func IsAuthError(err error) bool {
	var ae *authError
	return errors.As(err, &ae) || authFailure(err) != ""
}

// clientTLS runs the TLS handshake on c, a connection to addr; an empty
// ServerName in cfg is addr's host, as crypto/tls does when it dials.
func clientTLS(ctx context.Context, c net.Conn, addr string, cfg *tls.Config) (net.Conn, error) {
	if cfg.ServerName == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			host = addr
		}
		cfg = cfg.Clone()
		cfg.ServerName = host
	}
	tc := tls.Client(c, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = c.Close()
		return nil, err
	}
	return tc, nil
}

// schemaError says an existing table cannot take the sink's rows.
type schemaError struct{ problems []string }

func (e *schemaError) Error() string { return strings.Join(e.problems, "; ") }

// retryableCodes are the server error codes of conditions that can pass:
// overload, resource limits, timeouts, network and replication trouble.
var retryableCodes = map[int32]bool{
	23:   true, // CANNOT_READ_FROM_ISTREAM
	24:   true, // CANNOT_WRITE_TO_OSTREAM
	95:   true, // CANNOT_READ_FROM_SOCKET
	96:   true, // CANNOT_WRITE_TO_SOCKET
	159:  true, // TIMEOUT_EXCEEDED
	160:  true, // TOO_SLOW
	173:  true, // CANNOT_ALLOCATE_MEMORY
	202:  true, // TOO_MANY_SIMULTANEOUS_QUERIES
	203:  true, // NO_FREE_CONNECTION
	204:  true, // CANNOT_FSYNC
	209:  true, // SOCKET_TIMEOUT
	210:  true, // NETWORK_ERROR
	225:  true, // NO_ZOOKEEPER
	236:  true, // ABORTED
	241:  true, // MEMORY_LIMIT_EXCEEDED
	242:  true, // TABLE_IS_READ_ONLY (replica lost its coordination service)
	243:  true, // NOT_ENOUGH_SPACE
	244:  true, // UNEXPECTED_ZOOKEEPER_ERROR
	252:  true, // TOO_MANY_PARTS (but see isRetryableException)
	254:  true, // NO_ACTIVE_REPLICAS
	279:  true, // ALL_CONNECTION_TRIES_FAILED
	285:  true, // TOO_FEW_LIVE_REPLICAS
	286:  true, // UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE
	289:  true, // REPLICA_IS_NOT_IN_QUORUM
	319:  true, // UNKNOWN_STATUS_OF_INSERT
	364:  true, // RECEIVED_ERROR_TOO_MANY_REQUESTS
	384:  true, // PART_IS_TEMPORARILY_LOCKED
	394:  true, // QUERY_WAS_CANCELLED
	425:  true, // SYSTEM_ERROR
	439:  true, // CANNOT_SCHEDULE_TASK
	999:  true, // KEEPER_EXCEPTION
	1000: true, // POCO_EXCEPTION (mostly network I/O)
}

// IsRetryable reports whether writing again may succeed: true for network
// and connection errors (refused, reset, EOF, timeouts) and for server
// errors that pass, such as too many parts (code 252), memory limits or
// timeouts; false for errors that a retry repeats, such as a missing column,
// a type mismatch, a table that does not match the schema, bad credentials
// (a refused login, a failed TLS handshake) or a syntax error, and for a
// cancelled context.
func IsRetryable(err error) bool {
	if err == nil {
		return false
	}
	var se *schemaError
	if errors.As(err, &se) || IsAuthError(err) || tlserr.Is(err) {
		return false
	}
	if errors.Is(err, errClosed) || errors.Is(err, context.Canceled) {
		return false
	}
	var ex *ch.Exception
	if errors.As(err, &ex) {
		return isRetryableException(ex)
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.ErrClosedPipe) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, ch.ErrAcquireConnTimeout) ||
		errors.Is(err, ch.ErrConnectionClosed) || errors.Is(err, errInsertRunning) {
		return true
	}
	for _, errno := range []syscall.Errno{syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.ECONNABORTED,
		syscall.EPIPE, syscall.ETIMEDOUT, syscall.EHOSTUNREACH, syscall.ENETUNREACH, syscall.ENETDOWN} {
		if errors.Is(err, errno) {
			return true
		}
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	// The driver flattens some errors into text.
	msg := strings.ToLower(err.Error())
	for _, s := range []string{"connection refused", "connection reset", "broken pipe", "i/o timeout",
		"use of closed network connection", "unexpected eof", "no route to host", "network is unreachable"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return strings.HasSuffix(msg, ": eof") || msg == "eof"
}

func isRetryableException(ex *ch.Exception) bool {
	if ex.Code == 252 && strings.Contains(strings.ToLower(ex.Message), "partitions") {
		// Code 252 also means "too many partitions for single INSERT
		// block": the same batch would fail again.
		return false
	}
	return retryableCodes[ex.Code]
}

// Package tlserr recognises the errors of a failed TLS handshake, which a
// retry repeats: an untrusted or expired certificate, a name mismatch, an
// alert from the peer (a missing or refused client certificate), or a peer
// that does not speak TLS.
package tlserr

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"
)

// Is reports whether err comes from a TLS handshake that failed.
func Is(err error) bool {
	if err == nil {
		return false
	}
	var (
		verify   *tls.CertificateVerificationError
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		header   tls.RecordHeaderError
		alert    tls.AlertError
	)
	if errors.As(err, &verify) || errors.As(err, &unknown) || errors.As(err, &hostname) ||
		errors.As(err, &invalid) || errors.As(err, &header) || errors.As(err, &alert) {
		return true
	}
	// An alert received from the peer ("remote error: tls: bad
	// certificate") is an unexported type inside a *net.OpError, and some
	// clients flatten errors into text.
	return strings.Contains(err.Error(), "tls: ")
}

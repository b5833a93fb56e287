package redisservice

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestTLS runs against a real redis-server listening only on TLS, with a
// password, the way a managed Redis is reached.
func TestTLS(t *testing.T) {
	t.Parallel()
	addr, roots := startTLSRedis(t, "s3cret-pw")
	ctx := ctxT(t)

	s, err := New(Options{URL: "rediss://:s3cret-pw@" + addr, TLSConfig: &tls.Config{RootCAs: roots}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Connect(ctx); err != nil {
		t.Fatalf("Connect over TLS: %v", err)
	}
	if _, err := s.Set(ctx, "tls:k", "v", WithTTL(time.Minute)); err != nil {
		t.Fatalf("Set over TLS: %v", err)
	}
	if v, found, err := s.Get(ctx, "tls:k"); v != "v" || !found || err != nil {
		t.Errorf("Get over TLS = %q, %v, %v; want v, true, nil", v, found, err)
	}

	failing := []struct {
		name      string
		opts      Options
		connected bool // what IsConnected reports after the failure
	}{
		{"untrusted certificate", Options{URL: "rediss://:s3cret-pw@" + addr}, false},
		{"wrong password", Options{URL: "rediss://:wrong-pw@" + addr, TLSConfig: &tls.Config{RootCAs: roots}}, true},
		{"plain text to a TLS port", Options{URL: "redis://:s3cret-pw@" + addr}, false},
	}
	for _, tt := range failing {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.Timeout = time.Second
			tt.opts.MaxRetries = -1
			s, err := New(tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			err = s.Connect(ctx)
			if err == nil {
				t.Fatal("Connect succeeded; want an error")
			}
			if strings.Contains(err.Error(), "s3cret-pw") || strings.Contains(err.Error(), "wrong-pw") {
				t.Errorf("Connect error %q contains the password", err)
			}
			if got := s.IsConnected(); got != tt.connected {
				t.Errorf("IsConnected after %v = %v; want %v", err, got, tt.connected)
			}
		})
	}
}

// startTLSRedis starts a redis-server that listens only on TLS and
// requires password. It returns the address and a pool holding its
// self-signed certificate.
func startTLSRedis(t *testing.T, password string) (string, *x509.CertPool) {
	t.Helper()
	dir := t.TempDir()
	certPEM, keyPEM := selfSignedCert(t)
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	// The TLS port is the one the helper waits on; plain TCP is off.
	srv := startRedisServer(t, "--tls-port", "PORT", "--port", "0",
		"--tls-cert-file", certFile, "--tls-key-file", keyFile, "--tls-ca-cert-file", certFile,
		"--tls-auth-clients", "no", "--requirepass", password)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	return srv.addr(), pool
}

func selfSignedCert(t testing.TB) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

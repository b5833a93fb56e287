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
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestTLS runs against a real redis-server listening only on TLS, with a
// password, the way a managed Redis is reached.
func TestTLS(t *testing.T) {
	t.Parallel()
	addr, roots := startTLSRedis(t, "s3cret-pw")
	ctx := ctxT(t)

	s, err := New(Options{URL: "rediss://:s3cret-pw@" + addr, TLSConfig: &tls.Config{RootCAs: roots}})
	require.NoError(t, err)
	defer s.Close()
	require.NoError(t, s.Connect(ctx), "Connect over TLS")
	_, err = s.Set(ctx, "tls:k", "v", WithTTL(time.Minute))
	require.NoError(t, err, "Set over TLS")
	v, found, err := s.Get(ctx, "tls:k")
	assert.NoError(t, err, "Get over TLS")
	assert.True(t, found, "Get over TLS")
	assert.Equal(t, "v", v, "Get over TLS")

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
			require.NoError(t, err)
			defer s.Close()
			err = s.Connect(ctx)
			require.Error(t, err, "Connect succeeded; want an error")
			assert.NotContains(t, err.Error(), "s3cret-pw", "Connect error contains the password")
			assert.NotContains(t, err.Error(), "wrong-pw", "Connect error contains the password")
			assert.Equal(t, tt.connected, s.IsConnected(), "IsConnected after %v", err)
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
	require.NoError(t, os.WriteFile(certFile, certPEM, 0o600))
	require.NoError(t, os.WriteFile(keyFile, keyPEM, 0o600))
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
	require.NoError(t, err)
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
	require.NoError(t, err)
	kder, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

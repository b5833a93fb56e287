package redisservice

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The Sentinel failover itself is tested on real processes in
// failover_test.go; these tests need no server.

func TestSentinelOptionsRefused(t *testing.T) {
	t.Parallel()
	const secret = "s3ntinel-pw"
	addrs := []string{"127.0.0.1:26379"}
	tests := []struct {
		name string
		opts Options
	}{
		{"master without addrs", Options{SentinelMaster: "m"}},
		{"addrs without master", Options{SentinelAddrs: addrs}},
		{"password without master", Options{SentinelPassword: secret}},
		{"username without master", Options{SentinelUsername: "u"}},
		{"with Client", Options{SentinelMaster: "m", SentinelAddrs: addrs, Client: redis.NewClient(&redis.Options{})}},
		{"with ClientSideCache", Options{SentinelMaster: "m", SentinelAddrs: addrs, ClientSideCache: true}},
		{"addr with credentials", Options{SentinelMaster: "m", SentinelAddrs: []string{"app:" + secret + "@127.0.0.1:26379"}, SentinelPassword: secret}},
		{"addr without port", Options{SentinelMaster: "m", SentinelAddrs: []string{"127.0.0.1"}}},
		{"empty addr", Options{SentinelMaster: "m", SentinelAddrs: []string{"127.0.0.1:26379", ""}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.opts.Client != nil {
				t.Cleanup(func() { _ = tt.opts.Client.Close() })
			}
			s, err := New(tt.opts)
			require.ErrorIs(t, err, ErrInvalidArgument)
			assert.Nil(t, s)
			assert.NotContains(t, err.Error(), secret)
		})
	}
}

// TestSentinelClientSettings checks that a Sentinel Service's client gets
// every setting a plain one gets from Options and the URL.
func TestSentinelClientSettings(t *testing.T) {
	t.Parallel()
	opts := Options{
		URL:         "redis://app:master-pw@unused:1/3?min_idle_conns=0&conn_max_idle_time=7s",
		Timeout:     700 * time.Millisecond,
		DialTimeout: 300 * time.Millisecond,
		PoolTimeout: 900 * time.Millisecond,
		PoolSize:    7,
		MaxRetries:  1,
	}
	plain, err := New(opts)
	require.NoError(t, err)
	t.Cleanup(func() { _ = plain.Close() })
	opts.SentinelMaster, opts.SentinelAddrs = "mymaster", []string{"127.0.0.1:1", "127.0.0.1:2"}
	failover, err := New(opts)
	require.NoError(t, err)
	t.Cleanup(func() { _ = failover.Close() })

	want, got := plain.rdb.(*redis.Client).Options(), failover.rdb.(*redis.Client).Options()
	assert.Equal(t, "FailoverClient", got.Addr, "not a failover client")
	for _, f := range []struct {
		name      string
		want, got any
	}{
		{"Username", want.Username, got.Username},
		{"Password", want.Password, got.Password},
		{"DB", want.DB, got.DB},
		{"DialTimeout", want.DialTimeout, got.DialTimeout},
		{"ReadTimeout", want.ReadTimeout, got.ReadTimeout},
		{"WriteTimeout", want.WriteTimeout, got.WriteTimeout},
		{"PoolTimeout", want.PoolTimeout, got.PoolTimeout},
		{"PoolSize", want.PoolSize, got.PoolSize},
		{"MaxRetries", want.MaxRetries, got.MaxRetries},
		{"DialerRetries", want.DialerRetries, got.DialerRetries},
		{"ContextTimeoutEnabled", want.ContextTimeoutEnabled, got.ContextTimeoutEnabled},
		{"ConnMaxIdleTime", want.ConnMaxIdleTime, got.ConnMaxIdleTime},
		{"TLSConfig", want.TLSConfig, got.TLSConfig},
	} {
		assert.Equal(t, f.want, f.got, f.name)
	}
	assert.Equal(t, 3, got.DB)
	assert.Equal(t, 700*time.Millisecond, got.ReadTimeout)
	assert.Equal(t, 7, got.PoolSize)
	assert.Equal(t, 1, got.DialerRetries)
	assert.True(t, got.ContextTimeoutEnabled)
}

// TestSentinelsUnreachable: with every sentinel down, calls fail within
// their bound with their fallback and an error naming neither password,
// and the Service closes cleanly.
func TestSentinelsUnreachable(t *testing.T) {
	t.Parallel()
	const masterPW, sentinelPW = "Mast3r-pw-x", "S3ntinel-pw-y"
	addrs := []string{net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t))), net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))}
	s, err := New(Options{
		URL:              "redis://app:" + masterPW + "@unused/0",
		SentinelMaster:   "mymaster",
		SentinelAddrs:    addrs,
		SentinelUsername: "watcher",
		SentinelPassword: sentinelPW,
		Timeout:          300 * time.Millisecond,
	})
	require.NoError(t, err)
	defer s.Close()
	ctx := context.Background()

	var errs []error
	within(t, 3*time.Second, "Connect", func() { errs = append(errs, s.Connect(ctx)) })
	within(t, 3*time.Second, "Get", func() {
		v, found, err := s.Get(ctx, "k")
		assert.Empty(t, v)
		assert.False(t, found)
		errs = append(errs, err)
	})
	within(t, 3*time.Second, "CheckRateLimit", func() {
		r, err := s.CheckRateLimit(ctx, "ip", time.Minute, 1)
		assert.True(t, r.Allowed, "fail open")
		errs = append(errs, err)
	})
	assert.False(t, s.IsConnected())
	for _, err := range errs {
		require.Error(t, err)
		assert.NotContains(t, err.Error(), masterPW)
		assert.NotContains(t, err.Error(), sentinelPW)
	}
}

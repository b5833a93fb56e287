package redisservice

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestNewURL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		url     string
		wantErr bool
		addr    string
		tls     bool
		db      int
	}{
		{name: "plain", url: "redis://127.0.0.1:7000", addr: "127.0.0.1:7000"},
		{name: "db and auth", url: "redis://app:s3cret@10.0.0.1:6380/4", addr: "10.0.0.1:6380", db: 4},
		{name: "tls", url: "rediss://:s3cret@cache.internal", addr: "cache.internal:6379", tls: true},
		{name: "ipv6", url: "redis://[::1]:7001", addr: "[::1]:7001"},
		{name: "wrong scheme", url: "http://:s3cret@host:6379", wantErr: true},
		{name: "unix scheme", url: "unix:///tmp/redis.sock", wantErr: true},
		{name: "unparsable port", url: "redis://user:s3cret@host:port", wantErr: true},
		{name: "control char", url: "redis://user:s3cret\x7f@host", wantErr: true},
		{name: "bad db", url: "redis://:s3cret@host/notanumber", wantErr: true},
		{name: "password with at", url: "redis://user:s3c@ret@host:bad", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(Options{URL: tt.url})
			if tt.wantErr {
				if err == nil {
					s.Close()
				}
				require.Error(t, err, "New(%q)", tt.url)
				assert.ErrorIs(t, err, ErrInvalidArgument, "New(%q)", tt.url)
				for _, secret := range []string{"s3cret", "s3c", "ret@"} {
					if strings.Contains(tt.url, secret) {
						assert.NotContains(t, err.Error(), secret, "New(%q) error contains the password", tt.url)
					}
				}
				return
			}
			require.NoError(t, err, "New(%q)", tt.url)
			defer s.Close()
			o := s.rdb.(*redis.Client).Options()
			assert.Equal(t, tt.addr, o.Addr, "New(%q) address", tt.url)
			assert.Equal(t, tt.db, o.DB, "New(%q) db", tt.url)
			assert.Equal(t, tt.tls, o.TLSConfig != nil, "New(%q) tls", tt.url)
			assert.True(t, o.ContextTimeoutEnabled,
				"New(%q): ContextTimeoutEnabled is off; caller deadlines would not reach the socket", tt.url)
		})
	}
}

func TestNewURLFromEnvironment(t *testing.T) {
	t.Setenv("REDIS_URL", "redis://127.0.0.1:7777/2")
	s, err := New(Options{})
	require.NoError(t, err)
	defer s.Close()
	o := s.rdb.(*redis.Client).Options()
	assert.Equal(t, "127.0.0.1:7777", o.Addr, "New with $REDIS_URL address")
	assert.Equal(t, 2, o.DB, "New with $REDIS_URL db")

	t.Setenv("REDIS_URL", "")
	s2, err := New(Options{})
	require.NoError(t, err)
	defer s2.Close()
	assert.Equal(t, "localhost:6379", s2.rdb.(*redis.Client).Options().Addr, "New without URL")
}

func TestNewRejectsBadOptions(t *testing.T) {
	t.Parallel()
	for name, o := range map[string]Options{
		"negative timeout":  {Timeout: -time.Second},
		"negative pool":     {PoolSize: -1},
		"retries below -1":  {MaxRetries: -2},
		"negative lifetime": {SessionMaxLifetime: -time.Hour},
	} {
		t.Run(name, func(t *testing.T) {
			s, err := New(o)
			if !assert.ErrorIs(t, err, ErrInvalidArgument, "New(%+v)", o) && s != nil {
				s.Close()
			}
		})
	}
}

func TestNewDoesNotTouchTheNetwork(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	accepted := make(chan struct{}, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- struct{}{}
			c.Close()
		}
	}()
	s, err := New(Options{URL: "redis://" + ln.Addr().String()})
	require.NoError(t, err)
	defer s.Close()
	select {
	case <-accepted:
		require.Fail(t, "New dialled Redis")
	case <-time.After(50 * time.Millisecond):
	}
}

func TestClose(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	s, err := New(Options{URL: "redis://" + mr.Addr()})
	require.NoError(t, err)
	ctx := context.Background()
	mustSet(t, s, "k", "v")
	require.NoError(t, s.Close(), "Close")
	assert.NoError(t, s.Close(), "second Close")
	checks := []struct {
		name string
		call func() error
	}{
		{"Connect", func() error { return s.Connect(ctx) }},
		{"HealthCheck", func() error { return s.HealthCheck(ctx) }},
		{"Set", func() error {
			ok, err := s.Set(ctx, "k", "v")
			return wantFallback(ok == false, err)
		}},
		{"Get", func() error { v, ok, err := s.Get(ctx, "k"); return wantFallback(v == "" && !ok, err) }},
		{"Exists", func() error { ok, err := s.Exists(ctx, "k"); return wantFallback(!ok, err) }},
		{"Expire", func() error { ok, err := s.Expire(ctx, "k", time.Second); return wantFallback(!ok, err) }},
		{"TTL", func() error { d, err := s.TTL(ctx, "k"); return wantFallback(d == KeyMissing, err) }},
		{"Del", func() error { n, err := s.Del(ctx, "k"); return wantFallback(n == 0, err) }},
		{"MGet", func() error { m, err := s.MGet(ctx, "k"); return wantFallback(m != nil && len(m) == 0, err) }},
		{"MSet", func() error { return s.MSet(ctx, map[string]any{"k": 1}) }},
		{"GetJSON", func() error { var v any; ok, err := s.GetJSON(ctx, "k", &v); return wantFallback(!ok, err) }},
		{"HGetAll", func() error { m, err := s.HGetAll(ctx, "k"); return wantFallback(m != nil && len(m) == 0, err) }},
		{"Info", func() error { m, err := s.Info(ctx); return wantFallback(m != nil && len(m) == 0, err) }},
		{"UserSessions", func() error {
			m, err := s.UserSessions(ctx, "u1")
			return wantFallback(m != nil && len(m) == 0, err)
		}},
	}
	for _, c := range checks {
		assert.ErrorIs(t, c.call(), ErrClosed, "%s after Close", c.name)
	}
	assert.False(t, s.IsConnected(), "IsConnected after Close")
}

// wantFallback returns err, or an error of its own when the value was not
// the fallback.
func wantFallback(isFallback bool, err error) error {
	if !isFallback {
		return errors.New("value is not the fallback")
	}
	return err
}

func TestCloseLeavesCallersClient(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{})
	require.NoError(t, s.Close())
	assert.NoError(t, b.client.Ping(context.Background()).Err(), "caller's client after Service.Close; want it still open")
	assert.True(t, s.Client() == b.client, "Client() is not the client passed in")
}

func TestIsConnectedFollowsRedis(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	logs := &syncWriter{w: new(bytes.Buffer)}
	s, err := New(Options{
		URL:     "redis://" + mr.Addr(),
		Timeout: 300 * time.Millisecond,
		Logger:  slog.New(slog.NewTextHandler(logs, nil)),
	})
	require.NoError(t, err)
	defer s.Close()
	ctx := context.Background()
	// Connect within a deadline of its own: a loaded machine may take
	// longer than Timeout for a first dial.
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	require.NoError(t, s.Connect(cctx), "Connect")
	require.True(t, s.IsConnected(), "IsConnected after Connect")
	mr.Close()
	start := time.Now()
	for range 20 {
		v, found, err := s.Get(ctx, "k")
		require.Error(t, err, "Get with Redis down; want fallback and error")
		require.False(t, found, "Get with Redis down; want fallback and error")
		require.Empty(t, v, "Get with Redis down; want fallback and error")
	}
	require.False(t, s.IsConnected(), "IsConnected with Redis down")
	st := s.Stats()
	assert.True(t, st.Errors >= 20 && st.Fallbacks >= 20, "Stats = %+v; want >= 20 errors and fallbacks", st)
	lines := strings.Count(logs.String(), "op=get")
	elapsed := time.Since(start)
	maxLines := 1 + int(elapsed/time.Second)
	assert.True(t, lines <= maxLines && uint64(lines)+st.LogsSuppressed == 20,
		"logged %d of 20 get failures (%d suppressed) in %v; want at most %d, the rest counted",
		lines, st.LogsSuppressed, elapsed, maxLines)

	require.NoError(t, mr.Restart())
	// No other call: IsConnected must find out by itself.
	require.Eventually(t, s.IsConnected, 5*time.Second, 50*time.Millisecond,
		"IsConnected did not recover after Redis came back")
}

func TestContextErrorsStayReachable(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, _, err := s.Get(ctx, "k")
	assert.ErrorIs(t, err, context.Canceled, "Get with cancelled ctx")
	dctx, dcancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer dcancel()
	_, err = s.Set(dctx, "k", "v")
	assert.ErrorIs(t, err, context.DeadlineExceeded, "Set with expired ctx")
	assert.True(t, s.IsConnected(), "IsConnected after the caller's own cancellation")
}

func TestEveryCallIsBounded(t *testing.T) {
	t.Parallel()
	addr := stalledServer(t)
	s, err := New(Options{URL: "redis://" + addr, Timeout: 200 * time.Millisecond, MaxRetries: -1})
	require.NoError(t, err)
	defer s.Close()

	start := time.Now()
	_, _, err = s.Get(context.Background(), "k")
	took := time.Since(start)
	assert.Error(t, err, "Get against a stalled server; want an error within the Timeout bound")
	assert.LessOrEqual(t, took, 2*time.Second, "Get against a stalled server; want an error within the Timeout bound")
	assert.True(t, errors.Is(err, context.DeadlineExceeded) || isTimeout(err),
		"Get against a stalled server: %v; want a deadline or timeout error", err)

	// A caller's shorter deadline reaches the socket.
	s2, err := New(Options{URL: "redis://" + addr, Timeout: 10 * time.Second, MaxRetries: -1})
	require.NoError(t, err)
	defer s2.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start = time.Now()
	_, err = s2.Set(ctx, "k", "v")
	took = time.Since(start)
	assert.ErrorIs(t, err, context.DeadlineExceeded, "Set with a 100ms deadline")
	assert.LessOrEqual(t, took, time.Second, "Set with a 100ms deadline; want DeadlineExceeded in about 100ms")
}

func TestLogsNeverHoldValues(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	logs := &syncWriter{w: new(bytes.Buffer)}
	s := b.service(t, Options{Logger: slog.New(slog.NewTextHandler(logs, nil))})
	ctx := ctxT(t)
	b.client.HSet(ctx, b.raw("h"), "f", "v")
	_, err := s.Set(ctx, "h", "card-4111111111111111", XX(), KeepTTL())
	require.NoError(t, err, "SET replaces any type")
	b.client.HSet(ctx, b.raw("h2"), "f", "v")
	_, err = s.SetJSON(ctx, "h2", map[string]string{"card": "4111111111111111"})
	require.NoError(t, err)
	b.client.HSet(ctx, b.raw("h3"), "f", "v")
	var v map[string]string
	_, err = s.GetJSON(ctx, "h3", &v)
	require.Error(t, err, "GetJSON of a hash: want WRONGTYPE")
	assert.Contains(t, logs.String(), "op=getjson", "failure not logged")

	// Calls that carry a value and fail, so that they log.
	down := newService(t, Options{URL: "redis://" + closedPort(t), Logger: slog.New(slog.NewTextHandler(logs, nil))})
	_, err = down.Set(ctx, "k", "card-4111111111111111")
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "4111")
	err = down.HSet(ctx, "h", "f", "card-4111111111111111")
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "4111")
	err = down.MSet(ctx, map[string]any{"m": "card-4111111111111111"})
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "4111")
	for _, op := range []string{"op=set", "op=hset", "op=mset"} {
		assert.Contains(t, logs.String(), op, "the failed call was not logged")
	}
	assert.NotContains(t, logs.String(), "4111", "a value reached the logs")
}

// TestNewRefusesOptionsItWouldIgnore: with Options.Client, the dial and
// pool options would silently not apply; New says so instead. (Not
// parallel: it sets $REDIS_URL.)
func TestNewRefusesOptionsItWouldIgnore(t *testing.T) {
	b := newBackend(t, "miniredis")
	ignored := map[string]Options{
		"URL":                         {URL: "redis://other:6379"},
		"ClientSideCache":             {ClientSideCache: true},
		"ClientSideCacheEntries":      {ClientSideCacheEntries: 5},
		"ClientSideCacheMaxStaleness": {ClientSideCacheMaxStaleness: time.Second},
		"TLSConfig":                   {TLSConfig: &tls.Config{}},
		"DialTimeout":                 {DialTimeout: time.Second},
		"PoolSize":                    {PoolSize: 3},
		"PoolTimeout":                 {PoolTimeout: time.Second},
		"MaxRetries":                  {MaxRetries: -1},
	}
	for name, opts := range ignored {
		opts.Client = b.client
		s, err := New(opts)
		if !assert.ErrorIs(t, err, ErrInvalidArgument, "New with Client and %s", name) {
			s.Close()
			continue
		}
		assert.ErrorContains(t, err, name)
	}
	// $REDIS_URL is a default, not the caller's choice: it does not count.
	t.Setenv("REDIS_URL", "redis://from-env:6379")
	s, err := New(Options{Client: b.client, Timeout: time.Second, KeyPrefix: "p:"})
	require.NoError(t, err)
	require.NoError(t, s.Close())
	// AutoPipeline and NoAutoPipeline apply to a client passed in too.
	for _, opts := range []Options{{AutoPipeline: true}, {NoAutoPipeline: true}} {
		opts.Client = b.client
		s, err := New(opts)
		require.NoError(t, err, "New(%+v)", opts)
		require.NoError(t, s.Close())
	}
	_, err = New(Options{Client: b.client, AutoPipeline: true, NoAutoPipeline: true})
	require.ErrorIs(t, err, ErrInvalidArgument, "New with AutoPipeline and NoAutoPipeline")
}

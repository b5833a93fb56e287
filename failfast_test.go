package redisservice

import (
	"context"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRefusedPortFailsFast: once a call has found nothing listening, the
// calls after it return their fallback at once with ErrUnavailable
// instead of dialling (and backing off) again; the Service sees Redis
// back by itself.
func TestRefusedPortFailsFast(t *testing.T) {
	t.Parallel()
	srv := startRedisServer(t)
	srv.kill()
	s := newService(t, Options{URL: srv.url(), Timeout: time.Second})
	ctx := context.Background()
	_, _, err := s.Get(ctx, "k")
	require.Error(t, err)
	require.False(t, s.IsConnected())

	const n = 2000
	start := time.Now()
	for range n {
		v, found, err := s.Get(ctx, "k")
		require.ErrorIs(t, err, ErrUnavailable)
		require.False(t, found)
		require.Empty(t, v)
	}
	mean := time.Since(start) / n
	t.Logf("mean Get on a refused port, after the first: %v", mean)
	assert.Less(t, mean, time.Millisecond, "mean Get on a refused port, after the first")

	r, err := s.CheckRateLimit(ctx, "ip", time.Minute, 3)
	assert.ErrorIs(t, err, ErrUnavailable)
	assert.True(t, r.Allowed, "CheckRateLimit fails open")
	// An explicit check always asks Redis.
	err = s.HealthCheck(ctx)
	require.Error(t, err)
	assert.NotErrorIs(t, err, ErrUnavailable)

	// Down for long enough that go-redis's pool stops dialling too (after
	// PoolSize failed dials it tries once a second by itself).
	time.Sleep(2500 * time.Millisecond)
	srv.start()
	up := time.Now()
	waitFor(t, "IsConnected after a restart", s.IsConnected)
	t.Logf("IsConnected true %v after the restart", time.Since(up))
	_, err = s.Set(ctx, "k", "v")
	require.NoError(t, err)
}

// TestStalledServerFailsFast: with the server's process stopped, the
// first call waits for Options.Timeout; the calls after it, however
// many, answer within milliseconds until a background PING sees Redis
// answer again.
func TestStalledServerFailsFast(t *testing.T) {
	t.Parallel()
	srv := startRedisServer(t)
	const timeout = 300 * time.Millisecond
	s := newService(t, Options{URL: srv.url(), Timeout: timeout})
	ctx := context.Background()
	// Connect within a deadline of its own: a loaded machine may take
	// longer than Timeout for a first dial.
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	require.NoError(t, s.Connect(cctx))

	srv.pause()
	t.Cleanup(srv.resume)
	start := time.Now()
	_, _, err := s.Get(ctx, "k")
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.GreaterOrEqual(t, time.Since(start), timeout-10*time.Millisecond, "the first call waits for Timeout")
	require.False(t, s.IsConnected())

	const n = 64
	var wg sync.WaitGroup
	took := make([]time.Duration, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			_, _, errs[i] = s.Get(ctx, "k"+strconv.Itoa(i))
			took[i] = time.Since(start)
		}()
	}
	wg.Wait()
	for i := range n {
		assert.ErrorIs(t, errs[i], ErrUnavailable, "Get %d", i)
		assert.Less(t, took[i], 100*time.Millisecond, "Get %d on a stalled server, after the first failed", i)
	}

	slowest := slices.Max(took)
	t.Logf("%d concurrent Gets after the first timed out: slowest %v", n, slowest)

	srv.resume()
	up := time.Now()
	waitFor(t, "IsConnected after SIGCONT", s.IsConnected)
	t.Logf("IsConnected true %v after SIGCONT", time.Since(up))
	_, err = s.Set(ctx, "k", "v")
	require.NoError(t, err)
}

// BenchmarkGetRefusedPort measures a Get while nothing listens on the
// Service's port: what each call of a page costs during such an outage.
//
//	go test -run '^$' -bench GetRefusedPort -benchtime 2000x -count 6 . 2>/dev/null
func BenchmarkGetRefusedPort(b *testing.B) {
	s, err := New(Options{URL: "redis://127.0.0.1:" + strconv.Itoa(freePort(b)), Logger: slog.New(slog.DiscardHandler)})
	require.NoError(b, err)
	b.Cleanup(func() { s.Close() })
	ctx := context.Background()
	for b.Loop() {
		if _, _, err := s.Get(ctx, "k"); err == nil {
			b.Fatal("Get on a refused port = nil error")
		}
	}
}

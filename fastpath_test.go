package redisservice

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// cscInvalidationBound is how soon a write by another client must be
// visible through a Service with ClientSideCache on a healthy connection
// (the documented few milliseconds, with room for a loaded machine), its
// ClientSideCacheMaxStaleness set far longer.
const cscInvalidationBound = time.Second

func TestAutoPipelineConcurrentCallers(t *testing.T) {
	t.Parallel()
	urls := map[string]string{"miniredis": "redis://" + miniredis.RunT(t).Addr()}
	if u := os.Getenv(envTestURL); u != "" {
		urls["redis"] = u
	}
	for name, url := range urls {
		t.Run(name, func(t *testing.T) {
			prefix := "rstest:" + randomHex(t, 6) + ":"
			s := dialled(t, url, Options{AutoPipeline: true, KeyPrefix: prefix})
			require.NotNil(t, s.ap, "the Service has no autopipeliner")
			t.Cleanup(func() {
				if name != "miniredis" {
					_ = deleteByPrefix(ctxT(t), s.rdb, prefix)
				}
			})
			ctx := ctxT(t)
			var wg sync.WaitGroup
			errs := make(chan error, 64)
			for g := range 64 {
				wg.Go(func() {
					for i := range 20 {
						key, want := fmt.Sprintf("k%d", g), fmt.Sprintf("v%d.%d", g, i)
						if ok, err := s.Set(ctx, key, want, WithTTL(time.Minute)); !ok || err != nil {
							errs <- fmt.Errorf("Set(%q) = %v, %v; want true, nil", key, ok, err)
							return
						}
						got, found, err := s.Get(ctx, key)
						if got != want || !found || err != nil {
							errs <- fmt.Errorf("Get(%q) = %q, %v, %v; want %q, true, nil", key, got, found, err, want)
							return
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				assert.NoError(t, err)
			}
			require.NoError(t, s.HSet(ctx, "h", "f", "x"), "HSet")
			m, err := s.HGetAll(ctx, "h")
			assert.False(t, err != nil || m["f"] != "x", "HGetAll(h) = %v, %v; want map[f:x], nil", m, err)
			require.NoError(t, s.Close(), "Close")
			_, _, err = s.Get(ctx, "k0")
			assert.ErrorIs(t, err, ErrClosed, "Get after Close")
		})
	}
}

func TestClientSideCacheOptions(t *testing.T) {
	t.Parallel()
	addr := miniredis.RunT(t).Addr()
	tests := []struct {
		name string
		url  string
		opts Options
	}{
		{"database 1", "redis://" + addr + "/1", Options{ClientSideCache: true}},
		{"RESP2", "redis://" + addr + "/0?protocol=2", Options{ClientSideCache: true}},
		{"negative entries", "redis://" + addr, Options{ClientSideCache: true, ClientSideCacheEntries: -1}},
		{"negative staleness", "redis://" + addr, Options{ClientSideCacheMaxStaleness: -time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.URL = tt.url
			s, err := New(tt.opts)
			if !errors.Is(err, ErrInvalidArgument) && s != nil {
				_ = s.Close()
			}
			require.ErrorIs(t, err, ErrInvalidArgument, "New(%+v)", tt.opts)
		})
	}
}

// TestClientSideCacheSeesOtherWriters checks on a real Redis that a hot
// key is served from memory and that another client's write to it is
// visible within cscInvalidationBound.
func TestClientSideCacheSeesOtherWriters(t *testing.T) {
	t.Parallel()
	url := os.Getenv(envTestURL)
	if url == "" {
		t.Skipf("no real Redis: set %s (scripts/redis-test-servers start prints it)", envTestURL)
	}
	b := newBackend(t, "redis") // the other writer, and cleanup of b.prefix
	s := dialled(t, url, Options{ClientSideCache: true, KeyPrefix: b.prefix, ClientSideCacheMaxStaleness: time.Minute})
	c, ok := s.rdb.(*redis.Client)
	require.True(t, ok, "client is %T; want *redis.Client", s.rdb)
	ctx := ctxT(t)
	_, err := s.Set(ctx, "hot", "v0")
	require.NoError(t, err, "Set")
	for round := 1; round <= 5; round++ {
		// Warm the cache: the first read fetches, the next ones must hit.
		want := fmt.Sprintf("v%d", round-1)
		before := c.CSCStats().Hits
		for range 3 {
			got, _, err := s.Get(ctx, "hot")
			require.False(t, got != want || err != nil, "round %d: Get(hot) = %q, %v; want %q, nil", round, got, err, want)
		}
		hits := c.CSCStats().Hits - before
		require.False(t, hits < 2, "round %d: %d cache hits in 3 reads of a hot key; want >= 2", round, hits)

		want = fmt.Sprintf("v%d", round)
		require.NoError(t, b.client.Set(ctx, b.raw("hot"), want, 0).Err(), "other client's SET")

		start := time.Now()
		for {
			got, _, err := s.Get(ctx, "hot")
			require.NoError(t, err, "Get(hot)")
			if got == want {
				break
			}
			d := time.Since(start)
			require.False(t, d > cscInvalidationBound, "round %d: Get(hot) = %q %v after another client wrote %q; want it within %v", round, got, d, want, cscInvalidationBound)
			time.Sleep(100 * time.Microsecond)
		}
		t.Logf("round %d: other client's write seen after %v", round, time.Since(start))
	}
}

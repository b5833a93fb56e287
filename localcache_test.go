package redisservice

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// localService returns a Service over b with a local tier of n entries,
// once the tier is in use.
func localService(t testing.TB, b *backend, n int) *Service {
	t.Helper()
	s := b.service(t, Options{LocalCacheEntries: n})
	require.Eventually(t, s.LocalCacheActive, waitDeadline, time.Millisecond, "the local tier comes into use")
	return s
}

// invalidationBound is how soon a change in Redis must reach the tier.
const invalidationBound = time.Second

// cachedAs returns what Cache gives for key with a loader that must not
// run.
func cachedAs(t testing.TB, s *Service, key string) string {
	t.Helper()
	v, err := Cache(ctxT(t), s, key, time.Minute, func(context.Context) (string, error) { return "loaded", nil })
	require.NoError(t, err)
	return v
}

// warmLocal stores v at key through Cache and reads it once more, so that
// the local tier holds it.
func warmLocal(t testing.TB, s *Service, key, v string) {
	t.Helper()
	ctx := ctxT(t)
	_, err := Cache(ctx, s, key, time.Minute, func(context.Context) (string, error) { return v, nil })
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		got, err := Cache(ctx, s, key, time.Minute, func(context.Context) (string, error) { return "reloaded", nil })
		return err == nil && got == v && localHas[string](s, key)
	}, waitDeadline, 5*time.Millisecond, "the local tier holds %q", key)
}

func TestLocalCacheCoherence(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		if !b.real() {
			t.Skip("miniredis has no CLIENT TRACKING: TestLocalCacheOffWithoutTracking")
		}
		s := localService(t, b, 1000)
		other := b.service(t, Options{})
		ctx := ctxT(t)
		changes := []struct {
			name   string
			change func(key string)
			want   string // what Cache returns afterwards: "loaded" when the key is gone
		}{
			{"SET by a raw client", func(k string) { require.NoError(t, b.client.Set(ctx, b.raw(k), `"raw"`, time.Minute).Err()) }, "raw"},
			{"SetJSON by another Service", func(k string) {
				_, err := other.SetJSON(ctx, k, "other", WithTTL(time.Minute))
				require.NoError(t, err)
			}, "other"},
			{"DEL", func(k string) { require.NoError(t, b.client.Del(ctx, b.raw(k)).Err()) }, "loaded"},
			{"EXPIRE", func(k string) { require.NoError(t, b.client.PExpire(ctx, b.raw(k), 20*time.Millisecond).Err()) }, "loaded"},
			{"InvalidatePattern", func(k string) {
				n, err := other.InvalidatePattern(ctx, k+"*")
				require.NoError(t, err)
				require.EqualValues(t, 1, n)
			}, "loaded"},
		}
		for _, c := range changes {
			t.Run(c.name, func(t *testing.T) {
				key := "coherent:" + c.name
				warmLocal(t, s, key, "v1")
				start := time.Now()
				c.change(key)
				require.Eventually(t, func() bool { return !localHas[string](s, key) }, invalidationBound, time.Millisecond,
					"the local copy of %q dropped after %s", key, c.name)
				t.Logf("%s: local copy dropped after %v", c.name, time.Since(start))
				// EXPIRE is seen when it is set, and again when the key goes.
				require.Eventually(t, func() bool { return cachedAs(t, s, key) == c.want }, invalidationBound, time.Millisecond,
					"Cache of %q after %s returns %q", key, c.name, c.want)
			})
		}

		t.Run("TTL expiry", func(t *testing.T) {
			const ttl = 2 * time.Second
			key := "coherent:ttl"
			_, err := Cache(ctx, s, key, ttl, func(context.Context) (string, error) { return "short", nil })
			require.NoError(t, err)
			require.Eventually(t, func() bool {
				v, err := Cache(ctx, s, key, ttl, func(context.Context) (string, error) { return "again", nil })
				return err == nil && v == "short" && localHas[string](s, key)
			}, ttl/2, time.Millisecond, "the local tier holds the value")
			pttl := b.client.PTTL(ctx, b.raw(key)).Val()
			require.Positive(t, pttl)
			time.Sleep(pttl + 2*time.Millisecond) // the key's TTL has passed

			assert.False(t, localHas[string](s, key), "a local copy outlived its key's TTL")
			v, err := Cache(ctx, s, key, ttl, func(context.Context) (string, error) { return "again", nil })
			require.NoError(t, err)
			assert.Equal(t, "again", v, "Cache after the key's TTL")
		})

		t.Run("types", func(t *testing.T) {
			key := "coherent:types"
			require.NoError(t, b.client.Set(ctx, b.raw(key), `7`, time.Minute).Err())
			for range 2 {
				_, err := Cache(ctx, s, key, time.Minute, func(context.Context) (int, error) { return 0, nil })
				require.NoError(t, err)
				_, err = Cache(ctx, s, key, time.Minute, func(context.Context) (float64, error) { return 0, nil })
				require.NoError(t, err)
			}
			require.True(t, localHas[int](s, key) && localHas[float64](s, key), "copies as int and float64")
			require.NoError(t, b.client.Set(ctx, b.raw(key), `8`, time.Minute).Err())
			require.Eventually(t, func() bool { return !localHas[int](s, key) && !localHas[float64](s, key) }, invalidationBound, time.Millisecond,
				"every type's copy dropped")
		})
	})
}

// TestLocalCacheNullAsInterface: a JSON null read as an interface type is
// a nil value that the tier keeps and returns like any other.
func TestLocalCacheNullAsInterface(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		var s *Service
		if b.real() {
			s = localService(t, b, 10)
		} else { // no tracking: a tier in use that follows no node
			s = b.service(t, Options{})
			useLocalTier(t, s, 10)
		}
		ctx := ctxT(t)
		var loads atomic.Int32
		load := func(context.Context) (any, error) { loads.Add(1); return nil, nil }
		for i := range 3 { // a load, a read from Redis that fills the tier, a local hit
			v, err := Cache(ctx, s, "null", time.Minute, load)
			require.NoError(t, err, "call %d", i)
			assert.Nil(t, v, "call %d", i)
			if i == 1 {
				require.Eventually(t, func() bool {
					_, err := Cache(ctx, s, "null", time.Minute, load)
					return err == nil && localHas[any](s, "null")
				}, 10*time.Second, time.Millisecond, "the tier holds the null")
			}
		}
		assert.EqualValues(t, 1, loads.Load(), "loads")
	})
}

func TestLocalCacheHitIsLocal(t *testing.T) { // not parallel: AllocsPerRun
	b := newBackend(t, "redis")
	s := localService(t, b, 100)
	warmLocal(t, s, "hot", "v")
	ctx := ctxT(t)
	// A local hit takes no connection from the pool.
	before, pool := s.Stats().Hits, s.Stats().Pool
	allocs := testing.AllocsPerRun(100, func() {
		v, err := Cache(ctx, s, "hot", time.Minute, func(context.Context) (string, error) { return "loaded", nil })
		if err != nil || v != "v" {
			require.FailNow(t, fmt.Sprintf("Cache = %q, %v", v, err))
		}
	})
	assert.Zero(t, allocs, "allocations per local hit")
	assert.Equal(t, before+101, s.Stats().Hits, "each local hit counts as a hit")
	after := s.Stats().Pool
	assert.Equal(t, pool.Hits+pool.Misses, after.Hits+after.Misses, "connections taken from the pool by local hits")
}

func TestLocalCacheReconnect(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		if !b.real() {
			t.Skip("miniredis has no CLIENT TRACKING")
		}
		s := localService(t, b, 100)
		ctx := ctxT(t)
		for round := range 3 {
			key := fmt.Sprintf("kill:%d", round)
			warmLocal(t, s, key, "before")
			// Kill every client connection on every master, then write at once
			// from a connection made afterwards.
			killAll := func(ctx context.Context, c *redis.Client) error {
				for _, typ := range []string{"normal", "pubsub"} {
					if err := c.Do(ctx, "CLIENT", "KILL", "TYPE", typ).Err(); err != nil {
						return err
					}
				}
				return nil
			}
			if cc, ok := b.client.(*redis.ClusterClient); ok {
				require.NoError(t, cc.ForEachMaster(ctx, killAll))
			} else {
				require.NoError(t, killAll(ctx, b.client.(*redis.Client)))
			}
			require.Eventually(t, func() bool { return b.client.Set(ctx, b.raw(key), `"after"`, time.Minute).Err() == nil },
				waitDeadline, time.Millisecond, "a write after the kill")
			start := time.Now()
			require.Eventually(t, func() bool { return cachedAs(t, s, key) == "after" }, invalidationBound, time.Millisecond,
				"Cache sees the write made while the tracking connection was killed")
			t.Logf("round %d: the write was seen after %v", round, time.Since(start))
			require.Eventually(t, s.LocalCacheActive, waitDeadline, time.Millisecond, "the tier comes back into use")
			warmLocal(t, s, key, "after")
		}
	})
}

func TestLocalCacheFlushAll(t *testing.T) {
	t.Parallel()
	// FLUSHALL needs a server of the test's own.
	srv := startRedisServer(t)
	s, err := New(Options{URL: srv.url(), LocalCacheEntries: 10})
	require.NoError(t, err)
	defer s.Close()
	require.Eventually(t, s.LocalCacheActive, waitDeadline, time.Millisecond)
	warmLocal(t, s, "k", "v")
	raw := redis.NewClient(&redis.Options{Addr: srv.addr()})
	defer raw.Close()
	require.NoError(t, raw.FlushAll(ctxT(t)).Err())
	require.Eventually(t, func() bool { return !localHas[string](s, "k") }, invalidationBound, time.Millisecond, "FLUSHALL empties the tier")
	assert.Equal(t, "loaded", cachedAs(t, s, "k"))
}

func TestLocalCacheOffWithoutTracking(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	var logs bytes.Buffer
	var mu sync.Mutex
	s := b.service(t, Options{LocalCacheEntries: 10, Logger: slog.New(slog.NewTextHandler(&lockedWriter{w: &logs, mu: &mu}, nil))})
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return bytes.Contains(logs.Bytes(), []byte("local cache tier off"))
	}, waitDeadline, time.Millisecond, "a log line says the tier is off")
	mu.Lock()
	assert.Contains(t, logs.String(), "CLIENT TRACKING")
	mu.Unlock()
	ctx := ctxT(t)
	for range 3 {
		v, err := Cache(ctx, s, "k", time.Minute, func(context.Context) (string, error) { return "v", nil })
		require.NoError(t, err)
		assert.Equal(t, "v", v)
	}
	assert.False(t, s.LocalCacheActive())
	assert.False(t, localHas[string](s, "k"), "no copy kept without tracking")
	require.NoError(t, b.mr.Set(b.raw("k"), `"changed"`))
	assert.Equal(t, "changed", cachedAs(t, s, "k"), "every read goes to the server")
}

func TestLocalCacheOptions(t *testing.T) {
	t.Parallel()
	_, err := New(Options{URL: "redis://127.0.0.1:1", LocalCacheEntries: -1})
	assert.ErrorIs(t, err, ErrInvalidArgument)
	_, err = New(Options{URL: "redis://127.0.0.1:1", LocalCacheEntries: 10, ClientSideCache: true})
	assert.ErrorIs(t, err, ErrInvalidArgument)
}

// lockedWriter serialises writes to w.
type lockedWriter struct {
	w  *bytes.Buffer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func TestLocalCacheAfterClose(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "redis")
	s := localService(t, b, 10)
	warmLocal(t, s, "k", "v")
	require.NoError(t, s.Close())
	v, err := Cache(ctxT(t), s, "k", time.Minute, func(context.Context) (string, error) { return "loaded", nil })
	assert.ErrorIs(t, err, ErrClosed)
	assert.Equal(t, "loaded", v, "Cache after Close returns the loader's value, not a local copy")
}

func TestLocalCacheBytes(t *testing.T) { // not parallel: it measures the heap
	t.Run("default", func(t *testing.T) {
		// The tier's own test (internal/localtier) checks that it is bound
		// by the Bytes it is given.
		s := newService(t, Options{URL: "redis://" + closedPort(t), LocalCacheEntries: 1000})
		assert.EqualValues(t, 64<<20, s.opts.LocalCacheBytes, "the tier's bound without LocalCacheBytes")
	})
	t.Run("filled", func(t *testing.T) {
		const (
			bound = 8 << 20   // Options.LocalCacheBytes
			value = 256 << 10 // bytes of JSON per value
			n     = 120       // values: far past the bound
		)
		srv := startRedisServer(t)
		s := dialled(t, srv.url(), Options{LocalCacheEntries: 1000, LocalCacheBytes: bound})
		require.Eventually(t, s.LocalCacheActive, 5*time.Second, time.Millisecond)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // -race makes JSON slow
		defer cancel()
		big := strings.Repeat("x", value-2)
		heap := func() uint64 {
			runtime.GC()
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			return m.HeapAlloc
		}
		before := heap()
		for i := range n {
			key := "big:" + strconv.Itoa(i)
			for range 2 { // a store, then a read that fills the tier
				v, err := Cache(ctx, s, key, time.Minute, func(context.Context) (string, error) { return big, nil })
				require.NoError(t, err)
				require.Len(t, v, len(big))
			}
		}
		held := s.local.Len()
		grew := int64(heap()) - int64(before)
		t.Logf("%d of %d values of %d KiB held; heap grew by %d KiB", held, n, value>>10, grew>>10)
		assert.LessOrEqual(t, held*value, bound, "values held")
		assert.Positive(t, held, "values held")
		assert.Less(t, grew, int64(bound+bound/2+4<<20), "heap growth")
	})
}

func TestLocalTierOptionsAreTheServicesOwn(t *testing.T) {
	t.Parallel()
	// The trackers' own options replace what go-redis writes to
	// (internal/localtier TestTrackerOptions); TestLocalTierTrackerOptionsRace
	// runs it all under -race.
	c := redis.NewClient(&redis.Options{Addr: closedPort(t), Protocol: 3})
	t.Cleanup(func() { _ = c.Close() })
	s := newService(t, Options{Client: c, LocalCacheEntries: 10})
	require.NotNil(t, s.nodeOpts)
	require.NotSame(t, c.Options(), s.nodeOpts, "the Service keeps a copy of the client's options")
	assert.Equal(t, c.Options().Addr, s.nodeOpts.Addr)
	top, closeTop, err := s.topology()
	require.NoError(t, err)
	t.Cleanup(closeTop)
	nodes, _, err := top.List(ctxT(t))
	require.NoError(t, err)
	require.Len(t, nodes, 1)
	assert.Same(t, s.nodeOpts, nodes[c.Options().Addr], "the tracker's base options are the Service's copy")
}

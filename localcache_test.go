package redisservice

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"sync"
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
			t.Fatalf("Cache = %q, %v", v, err)
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

func TestLocalTierTickets(t *testing.T) {
	t.Parallel()
	fk := flightKey{key: "k", typ: reflect.TypeFor[string]()}
	newTier := func() *localTier {
		lt := newLocalTier(10, 1<<20)
		t.Cleanup(lt.close)
		lt.settleDoubt(lt.doubtSeq()) // as a discovery that found no node to wait for would
		require.True(t, lt.usable())
		return lt
	}
	has := func(lt *localTier) bool { _, ok := lt.get(fk, time.Now().UnixNano()); return ok }

	lt := newTier()
	tk := lt.ticket("k", "")
	lt.put(fk, tk, "v", 1, time.Now(), time.Minute, 0)
	assert.True(t, has(lt), "a value read with no invalidation meanwhile is kept")

	lt = newTier()
	tk = lt.ticket("k", "")
	lt.invalidate("k") // the key changed while the read was in flight
	lt.put(fk, tk, "old", 1, time.Now(), time.Minute, 0)
	assert.False(t, has(lt), "a value read before an invalidation of its key")

	lt = newTier()
	tk = lt.ticket("k", "")
	lt.invalidate("other")
	lt.invalidate("k2")
	lt.put(fk, tk, "v", 1, time.Now(), time.Minute, 0)
	// Other keys may share the stripe: then the value is dropped too, a miss
	// but never a stale read. Keys of other stripes do not matter.
	if lt.stripe("other") != lt.stripe("k") && lt.stripe("k2") != lt.stripe("k") {
		assert.True(t, has(lt), "invalidations of keys of other stripes")
	}

	lt = newTier()
	tk = lt.ticket("k", "")
	lt.setDown() // the tracker reconnects while the read is in flight
	lt.setUp()
	lt.put(fk, tk, "v", 1, time.Now(), time.Minute, 0)
	assert.False(t, has(lt), "a value read across a reconnect of the tracker")

	lt = newTier()
	lt.setDown()
	tk = lt.ticket("k", "")
	lt.setUp()
	lt.put(fk, tk, "v", 1, time.Now(), time.Minute, 0)
	assert.False(t, has(lt), "a value read while the tier was unused")

	lt = newTier()
	lt.put(fk, lt.ticket("k", ""), "v", 1, time.Now(), -2, 0)
	assert.False(t, has(lt), "a key that was gone (PTTL -2)")
	lt.put(fk, lt.ticket("k", ""), "v", 1, time.Now(), -1, 0)
	assert.True(t, has(lt), "a key without a TTL is kept until invalidated")
	lt.invalidate("k")
	assert.False(t, has(lt))

	lt = newTier()
	start := time.Now()
	lt.put(fk, lt.ticket("k", ""), "v", 1, start, time.Minute, 0)
	_, ok := lt.get(fk, start.Add(time.Minute-time.Millisecond).UnixNano())
	require.True(t, ok, "a copy before its key's PTTL ends")
	_, ok = lt.get(fk, start.Add(time.Minute).UnixNano())
	assert.False(t, ok, "a copy outlived its key's PTTL")

	lt = newTier()
	start = time.Now()
	lt.put(fk, lt.ticket("k", ""), "v", 1, start, time.Minute, 50*time.Second)
	e, ok := lt.get(fk, start.UnixNano())
	require.True(t, ok)
	assert.Equal(t, start.Add(10*time.Second).UnixNano(), e.stale, "stale once PTTL falls to the StaleWhileRevalidate window")
}

func TestLocalCacheBytes(t *testing.T) { // not parallel: it measures the heap
	t.Run("default", func(t *testing.T) {
		s := newService(t, Options{URL: "redis://" + closedPort(t), LocalCacheEntries: 1000})
		assert.True(t, s.local.store.IsWeighted())
		assert.EqualValues(t, 64<<20, s.local.store.GetMaximum(), "the tier's bound without LocalCacheBytes")
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
		s.local.store.CleanUp()
		held := 0
		for i := range n {
			if localHas[string](s, "big:"+strconv.Itoa(i)) {
				held++
			}
		}
		grew := int64(heap()) - int64(before)
		t.Logf("%d of %d values of %d KiB held; heap grew by %d KiB", held, n, value>>10, grew>>10)
		assert.LessOrEqual(t, held*value, bound, "values held")
		assert.Positive(t, held, "values held")
		assert.Less(t, grew, int64(bound+bound/2+4<<20), "heap growth")
	})
}

func TestLocalTierBounds(t *testing.T) {
	t.Parallel()
	has := func(lt *localTier, k string) bool {
		_, ok := lt.get(flightKey{key: k, typ: reflect.TypeFor[string]()}, time.Now().UnixNano())
		return ok
	}
	put := func(lt *localTier, k string, size int) {
		lt.put(flightKey{key: k, typ: reflect.TypeFor[string]()}, lt.ticket(k, ""), "v", size, time.Now(), time.Minute, 0)
	}
	newTier := func(entries int, bytes int64) *localTier {
		lt := newLocalTier(entries, bytes)
		t.Cleanup(lt.close)
		lt.settleDoubt(lt.doubtSeq())
		require.True(t, lt.usable())
		return lt
	}

	lt := newTier(100, 1<<20)
	put(lt, "small", 1<<16)
	put(lt, "large", 1<<16+1)
	assert.True(t, has(lt, "small"), "a value of LocalCacheBytes/16")
	assert.False(t, has(lt, "large"), "a value longer than LocalCacheBytes/16 is not kept")

	lt = newTier(100, 1<<30) // entries bind
	for i := range 1000 {
		put(lt, strconv.Itoa(i), 10)
	}
	lt.store.CleanUp()
	assert.LessOrEqual(t, lt.store.EstimatedSize(), 100, "entries kept with LocalCacheEntries 100")
	assert.Positive(t, lt.store.EstimatedSize())

	lt = newTier(1000, 1<<20) // bytes bind
	for i := range 1000 {
		put(lt, strconv.Itoa(i), 10_000)
	}
	lt.store.CleanUp()
	assert.LessOrEqual(t, lt.store.WeightedSize(), uint64(1<<20), "weight kept with LocalCacheBytes 1 MiB")
	assert.LessOrEqual(t, lt.store.EstimatedSize(), (1<<20)/10_000, "entries of 10 kB kept in 1 MiB")
	assert.Positive(t, lt.store.EstimatedSize())
}

func TestLocalCacheCloseStopsItsGoroutines(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{LocalCacheEntries: 10})
	require.NoError(t, s.Close())
	// otter's clean-up goroutine: a second stop reports false.
	assert.False(t, s.local.store.StopAllGoroutines(), "otter's goroutine was still running after Close")
}

func TestLocalTierOptionsAreTheServicesOwn(t *testing.T) {
	t.Parallel()
	c := redis.NewClient(&redis.Options{Addr: closedPort(t), Protocol: 3})
	t.Cleanup(func() { _ = c.Close() })
	s := newService(t, Options{Client: c, LocalCacheEntries: 10})
	require.NotNil(t, s.nodeOpts)
	require.NotSame(t, c.Options(), s.nodeOpts, "the Service keeps a copy of the client's options")
	lt := newLocalTier(10, 1<<20)
	t.Cleanup(lt.close)
	o := s.trackerOptions(newNodeTracker(lt, "x"), s.nodeOpts)
	require.NotNil(t, c.Options().MaintNotificationsConfig)
	assert.NotSame(t, c.Options().MaintNotificationsConfig, o.MaintNotificationsConfig,
		"the tracker's options share the config that the client's handshakes write")
	assert.Equal(t, c.Options().Addr, o.Addr)
}

package bench

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-redis/cache/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vevurn/redisservice"
)

// BenchmarkCacheHit compares the hit path of redisservice.Cache (JSON in
// Redis) with go-redis/cache/v9's Once (msgpack in Redis), both without a
// process-local layer, and each with one: Cache over a Service with
// Options.ClientSideCache (impl=service-csc) or with its coherent local
// tier of decoded values, Options.LocalCacheEntries (impl=service-local),
// and Once with a TinyLFU local cache (impl=gocache-local).
func BenchmarkCacheHit(b *testing.B) {
	s := newService(b, redisservice.Options{})
	csc := newService(b, redisservice.Options{ClientSideCache: true})
	lt := newLocalService(b, 1000)
	rdb := s.Client()
	plain := cache.New(&cache.Options{Redis: rdb})
	local := cache.New(&cache.Options{Redis: rdb, LocalCache: cache.NewTinyLFU(1000, time.Minute)})
	ctx := context.Background()
	want := newDoc()
	load := func(context.Context) (doc, error) { return want, nil }
	impls := []struct {
		name string
		get  func() (doc, error)
	}{
		{"service", func() (doc, error) { return redisservice.Cache(ctx, s, "bench:cache:svc", time.Minute, load) }},
		{"service-csc", func() (doc, error) { return redisservice.Cache(ctx, csc, "bench:cache:svc", time.Minute, load) }},
		{"service-local", func() (doc, error) { return redisservice.Cache(ctx, lt, "bench:cache:svc", time.Minute, load) }},
		{"gocache", func() (doc, error) { return onceGet(ctx, plain, "bench:cache:gc", want) }},
		{"gocache-local", func() (doc, error) { return onceGet(ctx, local, "bench:cache:gc", want) }},
	}
	for _, callers := range []int{1, 64} {
		for _, impl := range impls {
			b.Run(fmt.Sprintf("callers=%d/impl=%s", callers, impl.name), func(b *testing.B) {
				for range 3 { // fill: every timed call is a hit (the local tier's on the second read)
					_, err := impl.get()
					require.NoError(b, err)
					time.Sleep(5 * time.Millisecond) // the invalidation of the fill's own SET
				}
				runCallers(b, callers, func(int) error {
					d, err := impl.get()
					if err == nil && d.ID != want.ID {
						err = fmt.Errorf("cached doc ID = %q; want %q", d.ID, want.ID)
					}
					return err
				})
			})
		}
	}
}

func onceGet(ctx context.Context, c *cache.Cache, key string, v doc) (doc, error) {
	var d doc
	err := c.Once(&cache.Item{
		Ctx: ctx, Key: key, Value: &d, TTL: time.Minute,
		Do: func(*cache.Item) (any, error) { return v, nil },
	})
	return d, err
}

// TestCacheStampede starts 1000 callers at once on a cold key, for
// redisservice.Cache and for go-redis/cache's Once, and counts loader
// calls: Cache must call it once.
func TestCacheStampede(t *testing.T) {
	s := newService(t, redisservice.Options{})
	gc := cache.New(&cache.Options{Redis: s.Client()})
	ctx := context.Background()
	const callers = 1000
	stampede := func(key string, get func(key string, load func() (doc, error)) (doc, error)) (int64, time.Duration) {
		t.Helper()
		_ = s.Client().Del(ctx, key).Err()
		t.Cleanup(func() { _ = s.Client().Del(context.Background(), key).Err() })
		var loads atomic.Int64
		load := func() (doc, error) {
			loads.Add(1)
			time.Sleep(50 * time.Millisecond) // a slow database query
			return newDoc(), nil
		}
		var ready, done sync.WaitGroup
		gate := make(chan struct{})
		ready.Add(callers)
		for range callers {
			done.Go(func() {
				ready.Done()
				<-gate
				d, err := get(key, load)
				assert.NoError(t, err, "get(%q)", key)
				assert.NotEmpty(t, d.ID, "get(%q) returned no doc", key)
			})
		}
		ready.Wait()
		start := time.Now()
		close(gate)
		done.Wait()
		return loads.Load(), time.Since(start)
	}

	n, took := stampede("bench:stampede:svc", func(key string, load func() (doc, error)) (doc, error) {
		return redisservice.Cache(ctx, s, key, time.Minute, func(context.Context) (doc, error) { return load() })
	})
	t.Logf("redisservice.Cache: %d callers on a cold key -> %d loader calls in %v", callers, n, took.Round(time.Millisecond))
	assert.Equal(t, int64(1), n, "redisservice.Cache loader calls for %d concurrent callers", callers)
	n, took = stampede("bench:stampede:gc", func(key string, load func() (doc, error)) (doc, error) {
		var d doc
		err := gc.Once(&cache.Item{Ctx: ctx, Key: key, Value: &d, TTL: time.Minute,
			Do: func(*cache.Item) (any, error) { return load() }})
		return d, err
	})
	t.Logf("go-redis/cache Once: %d callers on a cold key -> %d loader calls in %v", callers, n, took.Round(time.Millisecond))
}

// newLocalService returns a Service with a local tier of n entries, once
// the tier is in use.
func newLocalService(tb testing.TB, n int) *redisservice.Service {
	tb.Helper()
	s := newService(tb, redisservice.Options{LocalCacheEntries: n})
	require.Eventually(tb, s.LocalCacheActive, 5*time.Second, time.Millisecond, "the local tier did not come into use")
	return s
}

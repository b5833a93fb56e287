package bench

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vevurn/redisservice"
)

// BenchmarkLocalCacheInvalidation measures how long a write by another
// client takes to reach a Service's local tier: the time from the end of
// the raw SET until Cache returns the new value (which includes the one
// round trip that reads it). It reports the median and the 99th
// percentile.
func BenchmarkLocalCacheInvalidation(b *testing.B) {
	s := newLocalService(b, 1000)
	rdb := s.Client()
	ctx := context.Background()
	const key = "bench:local:inval"
	never := func(context.Context) (string, error) { return "loaded", nil }
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		want := fmt.Sprintf("v%d", i)
		// Hold the previous value in the tier before the write.
		for range 3 {
			_, _ = redisservice.Cache(ctx, s, key, time.Minute, never)
		}
		if err := rdb.Set(ctx, key, `"`+want+`"`, time.Minute).Err(); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		for {
			v, err := redisservice.Cache(ctx, s, key, time.Minute, never)
			if err != nil {
				b.Fatal(err)
			}
			if v == want {
				break
			}
			// Yield between polls: on a two-core machine a poller that
			// never yields holds a processor the goroutine receiving the
			// invalidation may be waiting for.
			runtime.Gosched()
			if time.Since(start) > time.Second {
				b.Fatalf("the write of %q did not show within a second", want)
			}
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

// TestLocalCacheMemoryPerEntry fills the local tier with 20,000 small
// values and reports the heap it takes per entry.
func TestLocalCacheMemoryPerEntry(t *testing.T) {
	s := newLocalService(t, 30000)
	rdb := s.Client()
	ctx := context.Background()
	const n = 20000
	p := rdb.Pipeline()
	for i := range n {
		p.Set(ctx, fmt.Sprintf("bench:local:mem:%d", i), `{"id":"x","n":1}`, time.Minute)
	}
	_, err := p.Exec(ctx)
	require.NoError(t, err)
	t.Cleanup(func() {
		p := rdb.Pipeline()
		for i := range n {
			p.Del(ctx, fmt.Sprintf("bench:local:mem:%d", i))
		}
		_, _ = p.Exec(context.Background())
	})
	type small struct {
		ID string `json:"id"`
		N  int    `json:"n"`
	}
	never := func(context.Context) (small, error) { return small{}, nil }
	time.Sleep(50 * time.Millisecond) // the invalidations of the SETs
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range n {
		_, err := redisservice.Cache(ctx, s, fmt.Sprintf("bench:local:mem:%d", i), time.Minute, never)
		require.NoError(t, err)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := float64(after.HeapAlloc-before.HeapAlloc) / n
	t.Logf("local tier: %.0f B of heap per entry (key of ~20 bytes, a struct of a string and an int)", per)
	assert.LessOrEqual(t, per, 1024.0, "%.0f B per entry; want under 1 KiB", per)
}

// BenchmarkCacheMiss measures a miss of a cold key at one caller: GET, the
// load's second GET, the store, with the fleet-wide lock (SET NX before
// the load, DEL after the store: two more round trips) and without it
// (WithoutFleetLock). The loader returns at once.
func BenchmarkCacheMiss(b *testing.B) {
	s := newService(b, redisservice.Options{})
	ctx := context.Background()
	want := newDoc()
	load := func(context.Context) (doc, error) { return want, nil }
	for _, impl := range []struct {
		name string
		opts []redisservice.CacheOption
	}{
		{"lock", nil},
		{"nolock", []redisservice.CacheOption{redisservice.WithoutFleetLock()}},
	} {
		b.Run("impl="+impl.name, func(b *testing.B) {
			keys := make([]string, 0, b.N)
			b.Cleanup(func() {
				p := s.Client().Pipeline()
				for _, k := range keys {
					p.Del(context.Background(), k)
				}
				_, _ = p.Exec(context.Background())
			})
			runCallers(b, 1, func(i int) error {
				k := fmt.Sprintf("bench:miss:%s:%d:%d", impl.name, time.Now().UnixNano(), i)
				keys = append(keys, k)
				_, err := redisservice.Cache(ctx, s, k, time.Minute, load, impl.opts...)
				return err
			})
		})
	}
}

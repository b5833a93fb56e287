package bench

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vevurn/redisservice"
)

// TestInvalidatePatternBeside deletes the keys matching a pattern among
// many others, with Service.InvalidatePattern and with a naive KEYS + DEL,
// while another connection runs a GET loop, and reports the wall time of
// each and the GET latencies beside it. Sizes come from
// BENCH_INVALIDATE_KEYS and BENCH_INVALIDATE_MATCHING (default 20000 and
// 2000; bench/run uses 1000000 and 100000).
func TestInvalidatePatternBeside(t *testing.T) {
	total, matching := envInt(t, "BENCH_INVALIDATE_KEYS", 20000), envInt(t, "BENCH_INVALIDATE_MATCHING", 2000)
	require.LessOrEqual(t, matching, total, "BENCH_INVALIDATE_MATCHING %d > BENCH_INVALIDATE_KEYS %d", matching, total)
	s := newService(t, redisservice.Options{})
	rdb := s.Client()
	ctx := context.Background()
	t.Cleanup(func() {
		assert.NoError(t, unlinkPrefix(context.Background(), rdb, "bench:inv:"), "cleanup")
	})
	fill(t, rdb, "bench:inv:other:", total-matching)

	base := getLoop(t, func() {
		time.Sleep(300 * time.Millisecond)
	})
	t.Logf("GET beside nothing:            %s", base)

	fill(t, rdb, "bench:inv:hit:", matching)
	var n int64
	start := time.Now()
	svc := getLoop(t, func() {
		var err error
		n, err = s.InvalidatePattern(ctx, "bench:inv:hit:*")
		assert.NoError(t, err, "InvalidatePattern")
	})
	took := time.Since(start)
	assert.Equal(t, int64(matching), n, "InvalidatePattern")
	checkGone(t, rdb, "bench:inv:hit:*")
	t.Logf("InvalidatePattern %7d of %7d keys: %-12v GET beside it: %s", matching, total, took.Round(time.Millisecond), svc)

	fill(t, rdb, "bench:inv:hit:", matching)
	start = time.Now()
	naive := getLoop(t, func() {
		keys, err := rdb.Keys(ctx, "bench:inv:hit:*").Result()
		if err == nil {
			err = rdb.Del(ctx, keys...).Err()
		}
		assert.NoError(t, err, "KEYS + DEL")
	})
	took = time.Since(start)
	checkGone(t, rdb, "bench:inv:hit:*")
	t.Logf("KEYS + DEL        %7d of %7d keys: %-12v GET beside it: %s", matching, total, took.Round(time.Millisecond), naive)
}

// latencies summarises the GET loop.
type latencies struct {
	n                  int
	p50, p99, p999, mx time.Duration
}

func (l latencies) String() string {
	return fmt.Sprintf("n=%d p50=%v p99=%v p99.9=%v max=%v", l.n,
		l.p50.Round(time.Microsecond), l.p99.Round(time.Microsecond), l.p999.Round(time.Microsecond), l.mx.Round(time.Microsecond))
}

// getLoop runs GETs of one key on a connection of its own, one at a time,
// for as long as work runs, and returns their latencies.
func getLoop(t *testing.T, work func()) latencies {
	t.Helper()
	opts, err := redis.ParseURL(benchURL(t))
	require.NoError(t, err)
	opts.PoolSize = 1
	c := redis.NewClient(opts)
	defer c.Close()
	ctx := context.Background()
	require.NoError(t, c.Set(ctx, "bench:getloop", "x", 0).Err())
	var stop atomic.Bool
	var wg sync.WaitGroup
	var ds []time.Duration
	wg.Go(func() {
		for !stop.Load() {
			t0 := time.Now()
			err := c.Get(ctx, "bench:getloop").Err()
			d := time.Since(t0)
			if !assert.NoError(t, err, "GET beside") {
				return
			}
			ds = append(ds, d)
		}
	})
	time.Sleep(20 * time.Millisecond)
	work()
	stop.Store(true)
	wg.Wait()
	require.NotEmpty(t, ds, "GET loop made no call")
	slices.Sort(ds)
	q := func(p float64) time.Duration { return ds[min(len(ds)-1, int(p*float64(len(ds))))] }
	return latencies{n: len(ds), p50: q(0.50), p99: q(0.99), p999: q(0.999), mx: ds[len(ds)-1]}
}

// fill writes n keys named prefix+i, 1000 to an MSET.
func fill(t *testing.T, rdb redis.UniversalClient, prefix string, n int) {
	t.Helper()
	ctx := context.Background()
	const batch = 1000
	_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		pairs := make([]any, 0, 2*batch)
		for i := range n {
			pairs = append(pairs, prefix+strconv.Itoa(i), "v")
			if len(pairs) == 2*batch || i == n-1 {
				p.MSet(ctx, pairs...)
				pairs = make([]any, 0, 2*batch)
			}
		}
		return nil
	})
	require.NoError(t, err, "fill %s*", prefix)
}

// checkGone fails t when a key matches pattern.
func checkGone(t *testing.T, rdb redis.UniversalClient, pattern string) {
	t.Helper()
	ctx := context.Background()
	iter := rdb.Scan(ctx, 0, pattern, 5000).Iterator()
	n, first := 0, ""
	for iter.Next(ctx) {
		if n++; n == 1 {
			first = iter.Val()
		}
	}
	require.NoError(t, iter.Err())
	assert.Zero(t, n, "keys still match %s, e.g. %s", pattern, first)
}

// unlinkPrefix removes every key starting with prefix.
func unlinkPrefix(ctx context.Context, rdb redis.UniversalClient, prefix string) error {
	iter := rdb.Scan(ctx, 0, prefix+"*", 5000).Iterator()
	var keys []string
	for iter.Next(ctx) {
		if keys = append(keys, iter.Val()); len(keys) == 5000 {
			if err := rdb.Unlink(ctx, keys...).Err(); err != nil {
				return err
			}
			keys = keys[:0]
		}
	}
	if len(keys) > 0 {
		if err := rdb.Unlink(ctx, keys...).Err(); err != nil {
			return err
		}
	}
	return iter.Err()
}

func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	require.NoError(t, err, "%s=%q: want a positive integer", name, v)
	require.Positive(t, n, "%s=%q: want a positive integer", name, v)
	return n
}

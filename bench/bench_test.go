// Package bench compares redisservice with raw go-redis and with other Go
// libraries against a real redis-server. It is a module of its own so that
// the library's go.mod stays lean. Run it with ./run, which starts a
// throwaway redis-server; the benchmarks skip when REDIS_BENCH_URL is unset.
package bench

import (
	"context"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"github.com/vevurn/redisservice"
)

// envURL names the redis-server the benchmarks may fill with keys. Point
// it only at a server of your own: the InvalidatePattern benchmark writes
// up to a million keys (bench:inv:*), though it deletes them afterwards.
const envURL = "REDIS_BENCH_URL"

// callerCounts are the numbers of concurrent callers each comparison runs
// at.
var callerCounts = []int{1, 16, 64}

// benchURL returns $REDIS_BENCH_URL or skips b.
func benchURL(tb testing.TB) string {
	tb.Helper()
	u := os.Getenv(envURL)
	if u == "" {
		tb.Skipf("no redis-server for benchmarks: set %s (bench/run starts one and sets it)", envURL)
	}
	return u
}

// newService returns a Service that dials $REDIS_BENCH_URL with opts,
// closed at cleanup. Without a key prefix, so that the raw client sends
// exactly the same commands.
func newService(tb testing.TB, opts redisservice.Options) *redisservice.Service {
	tb.Helper()
	opts.URL = benchURL(tb)
	s, err := redisservice.New(opts)
	require.NoError(tb, err, "New")
	tb.Cleanup(func() { _ = s.Close() })
	require.NoError(tb, s.Connect(context.Background()), "Connect")
	return s
}

// runCallers runs op b.N times in total, spread over callers goroutines:
// a plain loop for one caller, RunParallel with SetParallelism otherwise.
// op gets a per-goroutine sequence number. The timer is reset first.
func runCallers(b *testing.B, callers int, op func(i int) error) {
	b.Helper()
	b.ReportAllocs()
	if callers <= 1 {
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if err := op(i); err != nil {
				b.Fatal(err)
			}
		}
		return
	}
	procs := runtime.GOMAXPROCS(0)
	b.SetParallelism((callers + procs - 1) / procs)
	var failed atomic.Bool
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if err := op(i); err != nil {
				if failed.CompareAndSwap(false, true) {
					b.Error(err)
				}
				return
			}
			i++
		}
	})
}

// roundTrips counts what a client sends: one per command outside a
// pipeline, one per pipeline. Add it with rdb.AddHook.
type roundTrips struct{ n atomic.Int64 }

func (h *roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmd)
	}
}

func (h *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmds)
	}
}

// value64 is the 64-byte value of the Set benchmarks.
var value64 = strings.Repeat("v", 64)

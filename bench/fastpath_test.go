package bench

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"github.com/vevurn/redisservice"
)

// BenchmarkAutoPipeline compares a Service with the default options
// (impl=default: a lone call on the plain client, concurrent ones through
// the autopipeliner), one with Options.AutoPipeline (impl=always: every
// call through the autopipeliner) and one with Options.NoAutoPipeline
// (impl=off: every call on the plain client) at 16 and 64 concurrent
// callers. ns/op is wall time over all callers' calls, the inverse of
// throughput.
func BenchmarkAutoPipeline(b *testing.B) {
	def := newService(b, redisservice.Options{})
	always := newService(b, redisservice.Options{AutoPipeline: true})
	off := newService(b, redisservice.Options{NoAutoPipeline: true})
	require.NoError(b, def.Client().Set(context.Background(), "bench:ap", value64, 0).Err())
	ctx := context.Background()
	ops := []struct {
		name string
		fn   func(s *redisservice.Service, i int) error
	}{
		{"get", func(s *redisservice.Service, _ int) error {
			_, found, err := s.Get(ctx, "bench:ap")
			if err == nil && !found {
				err = fmt.Errorf("Get: not found")
			}
			return err
		}},
		{"set", func(s *redisservice.Service, i int) error {
			_, err := s.Set(ctx, fmt.Sprintf("bench:ap:%d", i%1024), value64, redisservice.WithTTL(time.Minute))
			return err
		}},
	}
	for _, op := range ops {
		for _, callers := range []int{16, 64} {
			for _, impl := range []struct {
				name string
				s    *redisservice.Service
			}{{"default", def}, {"always", always}, {"off", off}} {
				b.Run(fmt.Sprintf("op=%s/callers=%d/impl=%s", op.name, callers, impl.name), func(b *testing.B) {
					runCallers(b, callers, func(i int) error { return op.fn(impl.s, i) })
				})
			}
		}
	}
}

// BenchmarkClientSideCache compares a hot Get served from process memory
// (impl=csc, Options.ClientSideCache) with the same Get over the network
// (impl=network), one caller.
func BenchmarkClientSideCache(b *testing.B) {
	network := newService(b, redisservice.Options{})
	csc := newService(b, redisservice.Options{ClientSideCache: true})
	ctx := context.Background()
	_, err := network.Set(ctx, "bench:csc", value64)
	require.NoError(b, err)
	for _, impl := range []struct {
		name string
		s    *redisservice.Service
	}{{"network", network}, {"csc", csc}} {
		b.Run("op=get/impl="+impl.name, func(b *testing.B) {
			_, _, err := impl.s.Get(ctx, "bench:csc") // warm the cache
			require.NoError(b, err)
			runCallers(b, 1, func(int) error {
				v, _, err := impl.s.Get(ctx, "bench:csc")
				if err == nil && v != value64 {
					err = fmt.Errorf("Get = %q; want the 64-byte value", v)
				}
				return err
			})
			b.StopTimer()
			if c, ok := impl.s.Client().(*redis.Client); ok && impl.name == "csc" {
				st := c.CSCStats()
				require.GreaterOrEqual(b, st.Hits, uint64(b.N), "CSC served %d of %d Gets from memory; want all", st.Hits, b.N)
			}
		})
	}
}

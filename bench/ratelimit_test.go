package bench

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"
	"github.com/vevurn/redisservice"
)

// BenchmarkRateLimit compares Service.CheckRateLimit (fixed window) with a
// naive INCR, then EXPIRE on the first hit, with redis_rate/v10 (GCRA in
// Lua), with Service.AllowN (GCRA) under one limit ("allown") and two
// limits decided together ("allown2"), and with Service.AllowAll over two
// keys, a limit each ("allowall2": a login per IP and per user, one script
// on a single node), all with limits never reached, at 1 and 64 callers.
// It reports round trips per check.
func BenchmarkRateLimit(b *testing.B) {
	s := newService(b, redisservice.Options{})
	rdb := s.Client()
	rt := &roundTrips{}
	rdb.AddHook(rt)
	limiter := redis_rate.NewLimiter(rdb)
	const limit = 1 << 30
	window := time.Minute
	ctx := context.Background()
	gcraLimit := redisservice.Limit{Rate: limit, Period: window}
	gcraLimit2 := redisservice.Limit{Rate: limit, Period: time.Hour}
	impls := []struct {
		name  string
		check func() error
	}{
		{"service", func() error {
			r, err := s.CheckRateLimit(ctx, "bench:rl:svc", window, limit)
			if err == nil && !r.Allowed {
				err = fmt.Errorf("CheckRateLimit: denied")
			}
			return err
		}},
		{"naive", func() error { return naiveAllow(ctx, rdb, "bench:rl:naive", window, limit) }},
		{"redis_rate", func() error {
			r, err := limiter.Allow(ctx, "bench:rl:rr", redis_rate.Limit{Rate: limit, Burst: limit, Period: window})
			if err == nil && r.Allowed == 0 {
				err = fmt.Errorf("redis_rate: denied")
			}
			return err
		}},
		{"allown", func() error { return allow(s.AllowN(ctx, "bench:rl:gcra", 1, gcraLimit)) }},
		{"allown2", func() error { return allow(s.AllowN(ctx, "bench:rl:gcra2", 1, gcraLimit, gcraLimit2)) }},
		{"allowall2", func() error {
			return allow(s.AllowAll(ctx, 1,
				redisservice.KeyLimit{Key: "bench:rl:ip", Limit: gcraLimit},
				redisservice.KeyLimit{Key: "bench:rl:user", Limit: gcraLimit2}))
		}},
	}
	for _, callers := range []int{1, 64} {
		for _, impl := range impls {
			b.Run(fmt.Sprintf("callers=%d/impl=%s", callers, impl.name), func(b *testing.B) {
				rt.n.Store(0)
				runCallers(b, callers, func(int) error { return impl.check() })
				b.ReportMetric(float64(rt.n.Load())/float64(b.N), "roundtrips/op")
			})
		}
	}
}

// allow turns a denial into an error.
func allow(r redisservice.RateLimitResult, err error) error {
	if err == nil && !r.Allowed {
		err = fmt.Errorf("AllowN: denied")
	}
	return err
}

// naiveAllow is the fixed-window limiter most code starts with: INCR, and
// EXPIRE when the INCR created the key. Not atomic: a crash between the two
// leaves a counter that never expires.
func naiveAllow(ctx context.Context, rdb redis.UniversalClient, key string, window time.Duration, limit int64) error {
	n, err := rdb.Incr(ctx, key).Result()
	if err != nil {
		return err
	}
	if n == 1 {
		if err := rdb.Expire(ctx, key, window).Err(); err != nil {
			return err
		}
	}
	if n > limit {
		return fmt.Errorf("naive: denied")
	}
	return nil
}

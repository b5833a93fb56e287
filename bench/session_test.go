package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"github.com/vevurn/redisservice"
)

// sessionDoc is a session as the original TypeScript service stores it
// (JSON.stringify, its key order, toISOString times), with application
// fields beside the seven, plus the idle TTL this package records.
const sessionDoc = `{"userId":"bench-user","email":"clerk@example.com","role":"cashier",` +
	`"createdAt":"2026-11-29T06:51:29.123Z","lastActivity":"2026-11-29T06:51:29.123Z",` +
	`"ip":"203.0.113.7","userAgent":"Mozilla/5.0 (X11; Linux x86_64) till/1.0",` +
	`"permissions":[],"cart":{"items":[{"sku":"A-1","qty":2,"price":12.5}],"note":"caf\u00e9 / ü"},` +
	`"csrf":"k3J9vQ","lastOrderId":1234567890123456,"counter":0,"idleTimeoutMs":1800000}`

// sessionIDs stores n sessions holding sessionDoc directly (the same
// bytes whatever the library version), indexes them under their user, and
// returns their ids.
func sessionIDs(b *testing.B, s *redisservice.Service, n int) []string {
	b.Helper()
	ids := make([]string, n)
	for i := range ids {
		id, err := redisservice.NewSessionID()
		require.NoError(b, err)
		ctx := context.Background()
		require.NoError(b, s.Client().Set(ctx, "session:"+id, sessionDoc, 30*time.Minute).Err())
		// Indexed, as CreateSession would have done.
		z := redis.Z{Score: float64(time.Now().Add(30 * time.Minute).UnixMilli()), Member: id}
		require.NoError(b, s.Client().ZAdd(ctx, "user-sessions:bench-user", z).Err())
		ids[i] = id
	}
	b.Cleanup(func() {
		for _, id := range ids {
			s.Client().Del(context.Background(), "session:"+id)
		}
		s.Client().Del(context.Background(), "user-sessions:bench-user")
	})
	return ids
}

// runPerSession runs op b.N times over callers goroutines, each on a
// session of its own (one user with many devices), and reports round
// trips per call.
func runPerSession(b *testing.B, s *redisservice.Service, rt *roundTrips, callers int, op func(id string) error) {
	b.Helper()
	ids := sessionIDs(b, s, callers)
	b.ReportAllocs()
	rt.n.Store(0)
	if callers <= 1 {
		b.ResetTimer()
		for range b.N {
			if err := op(ids[0]); err != nil {
				b.Fatal(err)
			}
		}
	} else {
		procs := runtime.GOMAXPROCS(0)
		b.SetParallelism((callers + procs - 1) / procs)
		var next atomic.Int64
		var failed atomic.Bool
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			id := ids[int(next.Add(1)-1)%len(ids)]
			for pb.Next() {
				if err := op(id); err != nil {
					if failed.CompareAndSwap(false, true) {
						b.Error(err)
					}
					return
				}
			}
		})
	}
	b.StopTimer()
	b.ReportMetric(float64(rt.n.Load())/float64(b.N), "roundtrips/op")
}

// BenchmarkSession measures GetSession and UpdateSessionActivity on a
// session carrying application fields, at 1 and 64 callers (each on its
// own session), with round trips per call.
func BenchmarkSession(b *testing.B) {
	s := newService(b, redisservice.Options{})
	rt := &roundTrips{}
	s.Client().AddHook(rt)
	ctx := context.Background()
	ops := []struct {
		name string
		call func(id string) error
	}{
		{"GetSession", func(id string) error {
			_, found, err := s.GetSession(ctx, id)
			if err == nil && !found {
				err = fmt.Errorf("GetSession: not found")
			}
			return err
		}},
		{"UpdateSessionActivity", func(id string) error {
			found, err := s.UpdateSessionActivity(ctx, id)
			if err == nil && !found {
				err = fmt.Errorf("UpdateSessionActivity: not found")
			}
			return err
		}},
	}
	ops = append(ops, sessionUpdateOps(s)...)
	for _, o := range ops {
		for _, callers := range []int{1, 64} {
			b.Run(fmt.Sprintf("op=%s/callers=%d", o.name, callers), func(b *testing.B) {
				runPerSession(b, s, rt, callers, o.call)
			})
		}
	}
}

// sessionUpdateOps is UpdateSession incrementing a counter in Values, the
// read-modify-write an application does.
func sessionUpdateOps(s *redisservice.Service) []struct {
	name string
	call func(id string) error
} {
	ctx := context.Background()
	return []struct {
		name string
		call func(id string) error
	}{{"UpdateSession", func(id string) error {
		found, err := s.UpdateSession(ctx, id, func(d *redisservice.SessionData) error {
			n, err := strconv.Atoi(string(d.Values["counter"]))
			d.Values["counter"] = json.RawMessage(strconv.Itoa(n + 1))
			return err
		})
		if err == nil && !found {
			err = fmt.Errorf("UpdateSession: not found")
		}
		return err
	}}}
}

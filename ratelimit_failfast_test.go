package redisservice

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRateLimitMiddlewareFailsFastOnAStalledServer stops the server
// (SIGSTOP) under 64 concurrent clients of the middleware, fixed window
// and GCRA: the requests in flight wait for Options.Timeout, but once the
// first has timed out every request answers (fail open) within
// milliseconds, and counting resumes once the server is back.
func TestRateLimitMiddlewareFailsFastOnAStalledServer(t *testing.T) {
	t.Parallel()
	configs := map[string]RateLimitConfig{
		"fixed window": {Limit: 1 << 30, Window: time.Hour},
		"gcra":         {Limits: []Limit{PerHour(1 << 30), PerSecond(1 << 30)}},
	}
	for name, cfg := range configs {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			// The slowest request after the first timeout is checked against
			// timeout: 2s, over ten times the 130ms a loaded machine showed.
			// The requests wait for it idle: it costs time, not CPU.
			const timeout = 2 * time.Second
			srv := startRedisServer(t)
			s, err := New(Options{URL: srv.url(), Timeout: timeout})
			require.NoError(t, err)
			t.Cleanup(func() { _ = s.Close() })
			var unavailable atomic.Int64
			cfg.OnError = func(r *http.Request, err error) {
				if errors.Is(err, ErrUnavailable) {
					unavailable.Add(1)
				}
				if slot, ok := r.Context().Value(errSlot{}).(*error); ok {
					*slot = err
				}
			}
			h, calls := limited(s, cfg)
			require.Equal(t, http.StatusOK, serve(h, "192.0.2.1:1").Code, "warm-up")

			srv.pause()
			t.Cleanup(srv.resume)
			type timing struct {
				start, end time.Time
				err        error
			}
			var (
				mu      sync.Mutex
				timings []timing
				wg      sync.WaitGroup
				codes   atomic.Int64 // responses other than 200
			)
			stop := time.Now().Add(timeout + time.Second)
			for c := range 64 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for time.Now().Before(stop) {
						var err error
						req := httptest.NewRequestWithContext(context.WithValue(context.Background(), errSlot{}, &err),
							http.MethodGet, "/", nil)
						req.RemoteAddr = "192.0.2.1:" + strconv.Itoa(c)
						rec := httptest.NewRecorder()
						start := time.Now()
						h.ServeHTTP(rec, req)
						end := time.Now()
						if rec.Code != http.StatusOK {
							codes.Add(1)
						}
						mu.Lock()
						timings = append(timings, timing{start, end, err})
						mu.Unlock()
						time.Sleep(2 * time.Millisecond) // a client's think time, sparing the CPU
					}
				}()
			}
			wg.Wait()
			assert.Zero(t, codes.Load(), "responses other than 200 (fail open)")
			assert.Positive(t, unavailable.Load())

			// The first request to time out on Redis (not one that waited
			// for a pooled connection, which says nothing of Redis) ends
			// the wait for all that start after it.
			var firstTimeout time.Time
			for _, tm := range timings {
				timedOut := tm.err != nil && !errors.Is(tm.err, redis.ErrPoolTimeout) && !errors.Is(tm.err, ErrUnavailable)
				if timedOut && (firstTimeout.IsZero() || tm.end.Before(firstTimeout)) {
					firstTimeout = tm.end
				}
			}
			require.False(t, firstTimeout.IsZero(), "no request waited for the stalled server")
			var after []time.Duration
			for _, tm := range timings {
				if tm.start.Before(firstTimeout) {
					continue
				}
				after = append(after, tm.end.Sub(tm.start))
				assert.ErrorIs(t, tm.err, ErrUnavailable, "a request after the first timeout asked Redis")
			}
			slices.Sort(after)
			require.Greater(t, len(after), 64*5, "requests after the first timeout")
			median, p95, slowest := after[len(after)/2], after[len(after)*95/100], after[len(after)-1]
			t.Logf("%d requests after the first timeout: median %v, p95 %v, slowest %v",
				len(after), median, p95, slowest)
			assert.Less(t, median, 2*time.Millisecond, "median latency after the first timeout")
			assert.Less(t, p95, 20*time.Millisecond, "p95 latency after the first timeout")
			assert.Less(t, slowest, timeout, "a request after the first timeout waited as long as Redis would")
			assert.EqualValues(t, len(timings)+1, calls.Load(), "every request was let through")

			// Back: counting resumes without a restart.
			srv.resume()
			deadline := time.Now().Add(waitDeadline)
			for {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				_, err := s.CheckRateLimit(ctx, "probe", time.Minute, 10)
				cancel()
				if err == nil {
					break
				}
				require.True(t, time.Now().Before(deadline), "Redis never answered again: %v", err)
				time.Sleep(20 * time.Millisecond)
			}
			rec := serve(h, "192.0.2.200:1")
			assert.Equal(t, http.StatusOK, rec.Code)
			assert.NotEqual(t, "", rec.Header().Get("RateLimit-Policy"))
		})
	}
}

// errSlot is the context key under which a test request carries where
// OnError stores its error.
type errSlot struct{}

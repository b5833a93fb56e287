package bench

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/vevurn/redisservice"
)

// payBody and payResponse are the request and the response of the
// benchmarked payment handler.
const (
	payBody     = `{"amountCents":1250,"currency":"EUR","card":"tok_visa"}`
	payResponse = `{"id":"pay_1","status":"captured","amountCents":1250}`
)

// BenchmarkIdempotency measures what IdempotencyMiddleware adds to a
// request, served in process (no HTTP connection) at 1 and 64 callers: a
// handler that writes a small JSON response, bare ("bare"), behind the
// middleware with a new key per request ("first": claim, handler, store),
// and replayed ("replay": one key, stored once, every request replayed).
// Beside them, the bare handler after the same number of plain go-redis
// round trips ("raw2": SET NX, then SET; "raw1": GET), the floor of any
// Redis-backed middleware. It reports round trips per request.
func BenchmarkIdempotency(b *testing.B) {
	s := newService(b, redisservice.Options{})
	rdb := s.Client()
	rt := &roundTrips{}
	rdb.AddHook(rt)
	ctx := context.Background()
	pay := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write([]byte(payResponse))
	})
	idem := s.IdempotencyMiddleware(redisservice.IdempotencyConfig{TTL: time.Minute})(pay)
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	var gen atomic.Int64 // numbers every caller's keys apart
	raw := func(rts ...func(key string) error) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			key := "bench:idem:raw:" + r.Header.Get("Idempotency-Key")
			for _, rt := range rts {
				if err := rt(key); err != nil {
					http.Error(w, err.Error(), http.StatusInternalServerError)
					return
				}
			}
			pay.ServeHTTP(w, r)
		})
	}
	setNX := func(key string) error { return rdb.SetNX(ctx, key, "R", time.Minute).Err() }
	set := func(key string) error { return rdb.Set(ctx, key, "D"+payResponse, time.Minute).Err() }
	get := func(key string) error { return rdb.Get(ctx, key).Err() }
	require.NoError(b, rdb.Set(ctx, "bench:idem:raw:replay", "D"+payResponse, time.Hour).Err())

	impls := []struct {
		name string
		h    http.Handler
		keys bool // a new key per request, else "replay"
	}{
		{"bare", pay, true},
		{"first", idem, true},
		{"raw2", raw(setNX, set), true},
		{"replay", idem, false},
		{"raw1", raw(get), false},
	}
	for _, callers := range []int{1, 64} {
		for _, impl := range impls {
			b.Run(fmt.Sprintf("callers=%d/impl=%s", callers, impl.name), func(b *testing.B) {
				prefix := run + ":" + impl.name + ":" + strconv.Itoa(callers) + ":"
				if !impl.keys {
					// Stored by a first request, before the timer starts.
					require.NoError(b, serve(impl.h, "replay"))
				}
				rt.n.Store(0)
				runWorkers(b, callers, func(int) func() error {
					// b.Run calls this function more than once, with
					// growing b.N: a key of an earlier run would replay.
					n := 0
					wp := prefix + strconv.FormatInt(gen.Add(1), 10) + ":"
					return func() error {
						key := "replay"
						if impl.keys {
							n++
							key = wp + strconv.Itoa(n)
						}
						return serve(impl.h, key)
					}
				})
				b.StopTimer()
				b.ReportMetric(float64(rt.n.Load())/float64(b.N), "roundtrips/op")
			})
		}
	}
}

// serve serves a payment with Idempotency-Key key through h, and checks
// the response.
func serve(h http.Handler, key string) error {
	r := httptest.NewRequest(http.MethodPost, "/payments", strings.NewReader(payBody))
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set("Idempotency-Key", key)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != http.StatusCreated || w.Body.String() != payResponse {
		return fmt.Errorf("POST /payments: status %d, body %q", w.Code, w.Body.String())
	}
	return nil
}

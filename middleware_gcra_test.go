package redisservice

import (
	"math"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// costly sends a GET from remoteAddr that costs cost tokens under
// costFromHeader.
func costly(h http.Handler, remoteAddr string, cost int) *httptest.ResponseRecorder {
	return serve(h, remoteAddr, "X-Cost", strconv.Itoa(cost))
}

func costFromHeader(r *http.Request) int {
	n, err := strconv.Atoi(r.Header.Get("X-Cost"))
	if err != nil {
		return 1
	}
	return n
}

func TestRateLimitMiddlewareGCRA(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		t.Parallel()
		s := b.service(t, Options{})
		ctx := ctxT(t)
		limits := []Limit{{Rate: 2, Period: time.Minute}, PerHour(3)} // 30s and 20min a token
		for _, version := range []HeaderVersion{HeadersDraft6, HeadersDraft11} {
			t.Run(strconv.Itoa(int(version)), func(t *testing.T) {
				h, calls := limited(s, RateLimitConfig{Limits: limits, Cost: costFromHeader, HeaderVersion: version})
				client := "203.0.113." + strconv.Itoa(int(version)+1)
				check := func(rec *httptest.ResponseRecorder, code, remaining int, reset string, what string) {
					t.Helper()
					assert.Equal(t, code, rec.Code, what)
					hd := rec.Header()
					if version == HeadersDraft6 {
						assert.Equal(t, "2;w=60, 3;w=3600", hd.Get("RateLimit-Policy"), what)
						assert.Equal(t, "2", hd.Get("RateLimit-Limit"), what)
						assert.Equal(t, strconv.Itoa(remaining), hd.Get("RateLimit-Remaining"), what)
						assert.Equal(t, reset, hd.Get("RateLimit-Reset"), what)
						assert.Empty(t, hd.Get("RateLimit"), what)
					} else {
						assert.Equal(t, `"2/1m0s";q=2;w=60, "3/1h0m0s";q=3;w=3600`, hd.Get("RateLimit-Policy"), what)
						assert.Equal(t, `"2/1m0s";r=`+strconv.Itoa(remaining)+`;t=`+reset, hd.Get("RateLimit"), what)
						assert.Empty(t, hd.Get("RateLimit-Limit"), what)
					}
				}
				check(costly(h, client+":1", 1), 200, 1, "30", "first request")
				rec := costly(h, client+":2", 2)
				check(rec, 429, 0, "30", "cost 2 with 1 token left")
				assert.Equal(t, "30", rec.Header().Get("Retry-After"))
				check(costly(h, client+":3", 0), 200, 1, "30", "cost 0: let through, not counted")
				check(costly(h, client+":4", 1), 200, 0, "60", "last token of the minute limit")
				check(costly(h, client+":5", 1), 429, 0, "60", "denied")
				assert.EqualValues(t, 3, calls.Load(), "next handler calls")

				// Nothing was taken from the hour limit by denied requests.
				name := "2/1m0s,3/1h0m0s:" + client
				r, err := s.AllowN(ctx, name, 0, PerHour(3))
				require.NoError(t, err)
				assert.Equal(t, 1, r.Remaining, "hour limit")

				require.NoError(t, s.ResetRateLimit(ctx, name))
				check(costly(h, client+":6", 1), 200, 1, "30", "after ResetRateLimit")
			})
		}
	})
}

func TestRateLimitMiddlewareFixedWindowDraft11(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{})
	h, _ := limited(s, RateLimitConfig{Limit: 2, Window: time.Minute, Name: `api "v1"`, HeaderVersion: HeadersDraft11})
	rec := serve(h, "192.0.2.1:1")
	assert.Equal(t, `"api \"v1\"";q=2;w=60`, rec.Header().Get("RateLimit-Policy"))
	assert.Equal(t, `"api \"v1\"";r=1;t=60`, rec.Header().Get("RateLimit"))
	assert.Empty(t, rec.Header().Get("RateLimit-Remaining"))
}

func TestRateLimitMiddlewareIPv6Prefix(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{})
	for _, tt := range []struct {
		prefix    int
		sameFirst bool // whether 2001:db8::2 shares 2001:db8::1's bucket
	}{{0, true}, {64, true}, {128, false}, {112, true}} {
		t.Run(strconv.Itoa(tt.prefix), func(t *testing.T) {
			h, _ := limited(s, RateLimitConfig{Limits: []Limit{PerHour(1)}, IPv6Prefix: tt.prefix, Name: "p" + strconv.Itoa(tt.prefix)})
			require.Equal(t, 200, serve(h, "[2001:db8::1]:1").Code)
			want := 200
			if tt.sameFirst {
				want = 429
			}
			assert.Equal(t, want, serve(h, "[2001:db8::2]:1").Code, "another address of the same host")
			assert.Equal(t, 200, serve(h, "[2001:db8:0:1::1]:1").Code, "another /64")
			// IPv4 is keyed per address whatever the prefix.
			require.Equal(t, 200, serve(h, "192.0.2.1:1").Code)
			assert.Equal(t, 200, serve(h, "192.0.2.2:1").Code)
		})
	}
	wantKey := "gcra:p0:2001:db8::/64"
	assert.True(t, b.mr.Exists(b.raw(wantKey)), "no %s in %v", wantKey, b.mr.Keys())
}

func TestRateLimitMiddlewareHugeWindow(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		t.Parallel()
		s := b.service(t, Options{})
		const secs = "9223372037" // math.MaxInt64 ns, rounded up to seconds
		for _, version := range []HeaderVersion{HeadersDraft6, HeadersDraft11} {
			h, _ := limited(s, RateLimitConfig{Limit: 1, Window: math.MaxInt64, HeaderVersion: version})
			client := "192.0.2." + strconv.Itoa(int(version)+1) + ":1"
			require.Equal(t, 200, serve(h, client).Code)
			rec := serve(h, client)
			require.Equal(t, 429, rec.Code)
			assert.Equal(t, secs, rec.Header().Get("Retry-After"))
			if version == HeadersDraft6 {
				assert.Equal(t, "1;w="+secs, rec.Header().Get("RateLimit-Policy"))
				assert.Equal(t, secs, rec.Header().Get("RateLimit-Reset"))
			} else {
				assert.Equal(t, `"1/2562047h47m16.854775807s";q=1;w=`+secs, rec.Header().Get("RateLimit-Policy"))
			}
		}
		// A GCRA limit as long: durations are capped at 2^53µs (285 years).
		h, _ := limited(s, RateLimitConfig{Limits: []Limit{{Rate: 1, Period: math.MaxInt64}}})
		require.Equal(t, 200, serve(h, "192.0.2.9:1").Code)
		rec := serve(h, "192.0.2.9:1")
		require.Equal(t, 429, rec.Code)
		assert.Equal(t, "1;w="+secs, rec.Header().Get("RateLimit-Policy"))
		ra, err := strconv.ParseInt(rec.Header().Get("Retry-After"), 10, 64)
		require.NoError(t, err)
		assert.True(t, ra > 9_000_000_000 && ra <= 9223372037, "Retry-After %d; want about 285 years", ra)
	})
}

// TestRateLimitMiddlewareNegativeCost: a negative cost is a programming
// error, not an outage: the request is answered 500 and does not reach
// the handler, in either fail mode (failing open would let a Cost of
// r.ContentLength, -1 for a chunked body, bypass the limit), and OnError
// gets ErrInvalidArgument. Redis is not asked.
func TestRateLimitMiddlewareNegativeCost(t *testing.T) {
	t.Parallel()
	for _, failClosed := range []bool{false, true} {
		t.Run("RateLimitFailClosed="+strconv.FormatBool(failClosed), func(t *testing.T) {
			t.Parallel()
			b := newBackend(t, "miniredis")
			s := b.service(t, Options{RateLimitFailClosed: failClosed})
			var seen atomic.Value
			h, calls := limited(s, RateLimitConfig{Limits: []Limit{PerHour(5)}, Cost: costFromHeader,
				OnError: func(_ *http.Request, err error) { seen.Store(err) }})
			rec := costly(h, "192.0.2.1:1", -1)
			assert.Equal(t, http.StatusInternalServerError, rec.Code)
			assert.Empty(t, rec.Header().Get("Retry-After"), "nothing to wait for")
			assert.JSONEq(t, `{"error":"invalid rate-limit cost"}`, rec.Body.String())
			assert.Zero(t, calls.Load())
			err, _ := seen.Load().(error)
			require.ErrorIs(t, err, ErrInvalidArgument)
			assert.Contains(t, err.Error(), "cost -1")
			assert.Empty(t, b.mr.Keys(), "Redis was asked")
			assert.Zero(t, s.Stats().Errors, "counted as a Redis failure")

			h, calls = limited(s, RateLimitConfig{Limits: []Limit{PerHour(5)}, Cost: costFromHeader})
			assert.Equal(t, http.StatusInternalServerError, costly(h, "192.0.2.1:1", -7).Code, "without OnError")
			assert.Zero(t, calls.Load())
		})
	}
}

func TestRateLimitMiddlewareInvalidGCRAConfigPanics(t *testing.T) {
	t.Parallel()
	s := newBackend(t, "miniredis").service(t, Options{})
	one := func(*http.Request) int { return 1 }
	for name, tt := range map[string]struct {
		cfg  RateLimitConfig
		want string
	}{
		"Limit with Limits":  {RateLimitConfig{Limit: 1, Limits: []Limit{PerSecond(1)}}, "use one or the other"},
		"Window with Limits": {RateLimitConfig{Window: time.Second, Limits: []Limit{PerSecond(1)}}, "use one or the other"},
		"invalid limit":      {RateLimitConfig{Limits: []Limit{PerSecond(1), PerSecond(0)}}, "Limits[1]"},
		"Cost without":       {RateLimitConfig{Limit: 1, Window: time.Second, Cost: one}, "Cost needs Limits"},
		"IPv6Prefix":         {RateLimitConfig{Limit: 1, Window: time.Second, IPv6Prefix: 129}, "IPv6Prefix 129"},
		"negative prefix":    {RateLimitConfig{Limit: 1, Window: time.Second, IPv6Prefix: -1}, "IPv6Prefix -1"},
		"HeaderVersion":      {RateLimitConfig{Limit: 1, Window: time.Second, HeaderVersion: 7}, "HeaderVersion 7"},
		"overflowing limit":  {RateLimitConfig{Limits: []Limit{{Rate: 1, Period: math.MaxInt64, Burst: 2}}}, "Limits[0]"},
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				msg, _ := recover().(string)
				assert.True(t, strings.HasPrefix(msg, "redisservice: RateLimitMiddleware: ") && strings.Contains(msg, tt.want),
					"panic %q; want one naming %q", msg, tt.want)
			}()
			s.RateLimitMiddleware(tt.cfg)
		})
	}
}

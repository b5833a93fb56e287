package redisservice

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// limited wraps a handler that counts its calls in the middleware.
func limited(s *Service, cfg RateLimitConfig) (http.Handler, *atomic.Int64) {
	var calls atomic.Int64
	next := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		calls.Add(1)
		w.WriteHeader(http.StatusOK)
	})
	return s.RateLimitMiddleware(cfg)(next), &calls
}

// serve sends a GET from remoteAddr with headers (name, value pairs).
func serve(h http.Handler, remoteAddr string, headers ...string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodGet, "/api/products", nil)
	req.RemoteAddr = remoteAddr
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func TestRateLimitMiddleware(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		t.Parallel()
		s := b.service(t, Options{})
		h, calls := limited(s, RateLimitConfig{Limit: 2, Window: 1500 * time.Millisecond})
		// Whole seconds, rounded up: 1.5s is 2 (1 once a real server has
		// used up half a second of the window).
		resetOK := func(v string) bool { return v == "2" || (b.real() && v == "1") }

		for i, wantRemaining := range []string{"1", "0"} {
			rec := serve(h, "203.0.113.7:40000")
			require.False(t, rec.Code != http.StatusOK, "request %d: status %d; want 200", i+1, rec.Code)
			hd := rec.Header()
			assert.False(t, hd.Get("RateLimit-Limit") != "2" || hd.Get("RateLimit-Remaining") != wantRemaining ||
				!resetOK(hd.Get("RateLimit-Reset")) || hd.Get("RateLimit-Policy") != "2;w=2", "request %d headers %v; want RateLimit-Limit 2, -Remaining %s, -Reset 2, -Policy 2;w=2", i+1, hd, wantRemaining)
			assert.False(t, hd.Get("Retry-After") != "", "request %d: Retry-After %q on an allowed request", i+1, hd.Get("Retry-After"))
		}

		// Same client, another port: same bucket, over the limit.
		rec := serve(h, "203.0.113.7:40001")
		require.False(t, rec.Code != http.StatusTooManyRequests, "third request: status %d; want 429", rec.Code)
		hd := rec.Header()
		assert.False(t, !resetOK(hd.Get("Retry-After")) || hd.Get("RateLimit-Remaining") != "0" || !resetOK(hd.Get("RateLimit-Reset")), "429 headers %v; want Retry-After 2, RateLimit-Remaining 0, RateLimit-Reset 2", hd)
		ct := hd.Get("Content-Type")
		assert.False(t, ct != "application/json", "429 Content-Type %q; want application/json", ct)
		var body struct {
			Error      string `json:"error"`
			RetryAfter int64  `json:"retryAfter"`
		}
		err := json.Unmarshal(rec.Body.Bytes(), &body)
		assert.False(t, err != nil || body.Error == "" ||
			strconv.FormatInt(body.RetryAfter, 10) != hd.Get("Retry-After"), "429 body %q (%v); want JSON with error and retryAfter = Retry-After", rec.Body, err)
		n := calls.Load()
		assert.False(t, n != 2, "next handler ran %d times; want 2 (not for the denied request)", n)

		// Another client has its own bucket.
		rec = serve(h, "198.51.100.9:1234")
		assert.False(t, rec.Code != http.StatusOK, "other client: status %d; want 200", rec.Code)
	})
}

func TestRateLimitMiddlewareResetRoundsUp(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{})
	tests := []struct {
		window time.Duration
		want   string
	}{
		{time.Millisecond, "1"},
		{999 * time.Millisecond, "1"},
		{time.Second, "1"},
		{1001 * time.Millisecond, "2"},
		{time.Minute, "60"},
	}
	for _, tt := range tests {
		h, _ := limited(s, RateLimitConfig{Limit: 1, Window: tt.window})
		serve(h, "192.0.2.1:1")
		rec := serve(h, "192.0.2.1:1")
		got, ra := rec.Header().Get("RateLimit-Reset"), rec.Header().Get("Retry-After")
		assert.False(t, got != tt.want || ra != tt.want, "window %v: RateLimit-Reset %q, Retry-After %q; want %q", tt.window, got, ra, tt.want)
	}
}

func TestRateLimitMiddlewareKeyAndName(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{})
	byUser := func(r *http.Request) string { return r.Header.Get("X-User") }
	users, _ := limited(s, RateLimitConfig{Limit: 1, Window: time.Minute, Key: byUser, Name: "users"})
	other, _ := limited(s, RateLimitConfig{Limit: 1, Window: time.Minute, Key: byUser, Name: "exports"})

	rec := serve(users, "192.0.2.1:1", "X-User", "ada")
	require.False(t, rec.Code != http.StatusOK, "ada first: %d; want 200", rec.Code)
	rec = serve(users, "192.0.2.2:1", "X-User", "ada")
	assert.False(t, rec.Code != http.StatusTooManyRequests, "ada again from another IP: %d; want 429 (keyed on the user)", rec.Code)
	rec = serve(users, "192.0.2.1:1", "X-User", "bob")
	assert.False(t, rec.Code != http.StatusOK, "bob from ada's IP: %d; want 200", rec.Code)
	rec = serve(other, "192.0.2.1:1", "X-User", "ada")
	assert.False(t, rec.Code != http.StatusOK, "ada under another Name: %d; want 200 (own buckets)", rec.Code)
	assert.True(t, b.mr.Exists(b.raw("ratelimit:users:ada")), "no counter at ratelimit:users:ada; keys %v", b.mr.Keys())
	// Key returning "" falls back to the client IP rather than exempting.
	rec = serve(users, "192.0.2.3:1")
	assert.False(t, rec.Code != http.StatusOK, "anonymous first: %d; want 200", rec.Code)
	rec = serve(users, "192.0.2.3:2")
	assert.False(t, rec.Code != http.StatusTooManyRequests, "anonymous again from the same IP: %d; want 429", rec.Code)
}

func TestRateLimitMiddlewareDefaultNameSeparatesLimits(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{})
	perMinute, _ := limited(s, RateLimitConfig{Limit: 1, Window: time.Minute})
	perHour, _ := limited(s, RateLimitConfig{Limit: 1, Window: time.Hour})
	serve(perMinute, "192.0.2.1:1")
	rec := serve(perHour, "192.0.2.1:1")
	assert.False(t, rec.Code != http.StatusOK, "a second limit with its own window: %d; want 200 (own bucket)", rec.Code)
	assert.False(t, !b.mr.Exists(b.raw("ratelimit:1/1m0s:192.0.2.1")) || !b.mr.Exists(b.raw("ratelimit:1/1h0m0s:192.0.2.1")), "keys %v; want ratelimit:1/1m0s:192.0.2.1 and ratelimit:1/1h0m0s:192.0.2.1", b.mr.Keys())
}

func TestRateLimitMiddlewareDenied(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{})
	denied := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusTeapot)
		_, _ = w.Write([]byte("slow down"))
	})
	h, calls := limited(s, RateLimitConfig{Limit: 1, Window: 10 * time.Second, Denied: denied})
	serve(h, "192.0.2.1:1")
	rec := serve(h, "192.0.2.1:1")
	assert.False(t, rec.Code != http.StatusTeapot || rec.Body.String() != "slow down" || rec.Header().Get("Retry-After") != "10", "denied: %d %q Retry-After %q; want the Denied handler's 418 with Retry-After 10", rec.Code, rec.Body, rec.Header().Get("Retry-After"))
	assert.False(t, calls.Load() != 1, "next ran %d times; want 1", calls.Load())
}

func TestRateLimitMiddlewareWhenRedisIsDown(t *testing.T) {
	t.Parallel()
	addr := closedPort(t)
	for _, failClosed := range []bool{false, true} {
		name := "fail open"
		if failClosed {
			name = "fail closed"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			s, err := New(Options{URL: "redis://" + addr, Timeout: 300 * time.Millisecond, RateLimitFailClosed: failClosed})
			require.NoError(t, err)
			defer s.Close()
			var seen atomic.Value
			h, calls := limited(s, RateLimitConfig{Limit: 5, Window: 30 * time.Second,
				OnError: func(_ *http.Request, err error) { seen.Store(err) }})
			rec := serve(h, "192.0.2.1:1")
			seenErr, _ := seen.Load().(error)
			assert.Error(t, seenErr, "OnError not called")
			assert.False(t, rec.Header().Get("RateLimit-Limit") != "5", "headers %v; want RateLimit-Limit 5 even when Redis is down", rec.Header())
			if !failClosed {
				assert.False(t, rec.Code != http.StatusOK || calls.Load() != 1, "fail open: status %d, next ran %d times; want 200 and 1", rec.Code, calls.Load())
				return
			}
			assert.False(t, rec.Code != http.StatusServiceUnavailable || calls.Load() != 0 || rec.Header().Get("Retry-After") != "30" ||
				rec.Header().Get("Content-Type") != "application/json", "fail closed: status %d, next ran %d times, headers %v; want 503 JSON with Retry-After 30, next not run", rec.Code, calls.Load(), rec.Header())
		})
	}
}

func TestRateLimitMiddlewareInvalidConfigPanics(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{})
	tests := []struct {
		name string
		cfg  RateLimitConfig
		want string
	}{
		{"zero config", RateLimitConfig{}, "Limit 0"},
		{"negative limit", RateLimitConfig{Limit: -1, Window: time.Second}, "Limit -1"},
		{"zero window", RateLimitConfig{Limit: 1}, "Window 0s"},
		{"sub-millisecond window", RateLimitConfig{Limit: 1, Window: time.Microsecond}, "Window 1µs"},
		{"invalid proxy", RateLimitConfig{Limit: 1, Window: time.Second, TrustedProxies: []netip.Prefix{{}}}, "TrustedProxies[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer func() {
				msg, _ := recover().(string)
				assert.False(t, !strings.HasPrefix(msg, "redisservice: RateLimitMiddleware: ") || !strings.Contains(msg, tt.want), "RateLimitMiddleware(%+v) panic %q; want one prefixed \"redisservice: RateLimitMiddleware: \" naming %q", tt.cfg, msg, tt.want)
			}()
			s.RateLimitMiddleware(tt.cfg)
		})
	}
}

// TestRateLimitMiddlewareTrustedProxy: behind a trusted proxy, each
// client that the proxy names in the configured header gets a bucket of
// its own, whichever proxy it came through.
func TestRateLimitMiddlewareTrustedProxy(t *testing.T) {
	t.Parallel()
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	for _, tt := range []struct{ header, send, a, b string }{
		{"", "X-Forwarded-For", "198.51.100.9", "198.51.100.10"},
		{"x-real-ip", "X-Real-IP", "198.51.100.9", "198.51.100.10"},
		{"Forwarded", "Forwarded", "for=198.51.100.9", `for="198.51.100.10:4711"`},
	} {
		t.Run(tt.send, func(t *testing.T) {
			t.Parallel()
			b := newBackend(t, "miniredis")
			s := b.service(t, Options{})
			h, _ := limited(s, RateLimitConfig{Limit: 1, Window: time.Minute, Name: "p",
				TrustedProxies: trusted, ForwardedHeader: tt.header})
			assert.Equal(t, http.StatusOK, serve(h, "10.0.0.2:1", tt.send, tt.a).Code, "client a")
			assert.Equal(t, http.StatusTooManyRequests, serve(h, "10.0.0.3:1", tt.send, tt.a).Code, "client a through another proxy")
			assert.Equal(t, http.StatusOK, serve(h, "10.0.0.2:1", tt.send, tt.b).Code, "client b")
			assert.True(t, b.mr.Exists(b.raw("ratelimit:p:198.51.100.9")), "keys %v", b.mr.Keys())
			assert.True(t, b.mr.Exists(b.raw("ratelimit:p:198.51.100.10")), "keys %v", b.mr.Keys())
		})
	}
}

func TestRateLimitMiddlewareIgnoresSpoofedHeaders(t *testing.T) {
	t.Parallel()
	spoofs := []struct {
		name    string
		headers []string
	}{
		{"X-Forwarded-For", []string{"X-Forwarded-For", "1.2.3.4"}},
		{"X-Forwarded-For list", []string{"X-Forwarded-For", "5.6.7.8, 9.9.9.9"}},
		{"X-Real-IP", []string{"X-Real-IP", "1.2.3.5"}},
		{"Forwarded", []string{"Forwarded", "for=1.2.3.6"}},
		{"all at once", []string{"X-Forwarded-For", "1.2.3.7", "X-Real-IP", "1.2.3.8", "Forwarded", "for=1.2.3.9"}},
	}
	for _, trusted := range [][]netip.Prefix{nil, {netip.MustParsePrefix("10.0.0.0/8")}} {
		name := "no trusted proxies"
		if trusted != nil {
			name = "client is not a trusted proxy"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := newBackend(t, "miniredis")
			s := b.service(t, Options{})
			h, _ := limited(s, RateLimitConfig{Limit: 1, Window: time.Minute, TrustedProxies: trusted})
			first := serve(h, "203.0.113.7:1000")
			require.False(t, first.Code != http.StatusOK, "first request: %d; want 200", first.Code)

			for _, sp := range spoofs {
				rec := serve(h, "203.0.113.7:1001", sp.headers...)
				assert.False(t, rec.Code != http.StatusTooManyRequests, "spoofed %s: status %d; want 429 (same bucket as the client's address)", sp.name, rec.Code)
			}
			keys := b.mr.Keys()
			assert.False(t, len(keys) != 1, "counters %v; want one, for 203.0.113.7", keys)
		})
	}
}

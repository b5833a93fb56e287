package redisservice

import (
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var updateHeaders = flag.Bool("update-headers", false, "rewrite testdata/ratelimit-headers.golden")

// TestRateLimitHeadersGolden: every header field and body that each
// HeaderVersion sends, for a fixed window and for GCRA limits, allowed and
// denied, on a server whose clock stands still. The golden file is
// testdata/ratelimit-headers.golden (go test -run HeadersGolden -update-headers
// rewrites it).
func TestRateLimitHeadersGolden(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	b.now = time.Date(2030, 1, 2, 3, 4, 5, 250_000_000, time.UTC) // X-RateLimit-Reset rounds up
	b.mr.SetTime(b.now)
	s := b.service(t, Options{})
	var out strings.Builder
	for _, version := range []struct {
		name string
		v    HeaderVersion
	}{{"HeadersDraft6", HeadersDraft6}, {"HeadersDraft11", HeadersDraft11}, {"HeadersXRateLimit", HeadersXRateLimit}} {
		for _, algo := range []struct {
			name string
			cfg  RateLimitConfig
		}{
			{"fixed window", RateLimitConfig{Limit: 2, Window: 90 * time.Second}},
			{"GCRA", RateLimitConfig{Limits: []Limit{{Rate: 10, Period: time.Minute, Burst: 2}, PerHour(100)}}},
		} {
			cfg := algo.cfg
			cfg.HeaderVersion, cfg.Name = version.v, version.name+" "+algo.name
			h, _ := limited(s, cfg)
			for i := 1; i <= 3; i++ {
				rec := serve(h, "203.0.113.7:1")
				fmt.Fprintf(&out, "== %s, %s, request %d\n%d\n", version.name, algo.name, i, rec.Code)
				names := make([]string, 0, len(rec.Header()))
				for name := range rec.Header() {
					names = append(names, name)
				}
				slices.Sort(names)
				for _, name := range names {
					fmt.Fprintf(&out, "%s: %s\n", name, strings.Join(rec.Header()[name], ", "))
				}
				out.WriteString(rec.Body.String())
			}
		}
	}
	golden := filepath.Join("testdata", "ratelimit-headers.golden")
	if *updateHeaders {
		require.NoError(t, os.WriteFile(golden, []byte(out.String()), 0o644))
	}
	want, err := os.ReadFile(golden)
	require.NoError(t, err, "go test -run HeadersGolden -update-headers writes it")
	assert.Equal(t, string(want), out.String(), "headers and bodies (go test -run HeadersGolden -update-headers rewrites %s)", golden)
}

// TestRateLimitMiddlewareXRateLimitWhenRedisIsDown: failing closed, the
// X-RateLimit fields come with the 503 and its Retry-After.
func TestRateLimitMiddlewareXRateLimitWhenRedisIsDown(t *testing.T) {
	t.Parallel()
	s := downService(t, Options{RateLimitFailClosed: true})
	h, _ := limited(s, RateLimitConfig{Limits: []Limit{PerMinute(6)}, HeaderVersion: HeadersXRateLimit})
	start := time.Now()
	rec := serve(h, "203.0.113.7:1")
	assert.Equal(t, http.StatusServiceUnavailable, rec.Code)
	hd := rec.Header()
	assert.Equal(t, "10", hd.Get("Retry-After"), "one token of PerMinute(6)")
	assert.Equal(t, "6", hd.Get("X-RateLimit-Limit"))
	assert.Equal(t, "0", hd.Get("X-RateLimit-Remaining"))
	reset := hd.Get("X-RateLimit-Reset")
	lo, hi := start.Add(10*time.Second).Unix(), time.Now().Add(10*time.Second).Unix()+1
	assert.True(t, reset >= fmt.Sprint(lo) && reset <= fmt.Sprint(hi), "X-RateLimit-Reset %s; want the Unix time in 10 s (%d to %d)", reset, lo, hi)
	assert.Empty(t, hd.Get("RateLimit-Policy"), "no draft fields with HeadersXRateLimit")
}

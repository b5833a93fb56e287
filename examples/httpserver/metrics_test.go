package main

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vevurn/redisservice"
)

// TestMetrics: /metrics serves the Service's instruments in the
// Prometheus text format, counting what the API did.
func TestMetrics(t *testing.T) {
	mr := miniredis.RunT(t)
	mp, metrics, err := newMetrics()
	require.NoError(t, err)
	t.Cleanup(func() { shutdownMetrics(mp) })
	svc, err := redisservice.New(redisservice.Options{URL: "redis://" + mr.Addr(), KeyPrefix: "pos:", MeterProvider: mp})
	require.NoError(t, err)
	t.Cleanup(func() { _ = svc.Close() })
	api, err := newServer(svc, newCatalog())
	require.NoError(t, err)
	ts := httptest.NewServer(withMetrics(api, metrics))
	t.Cleanup(ts.Close)

	c := newClient(t)
	for range 3 {
		resp, _ := do(t, c, "GET", ts.URL+"/products", "")
		require.Equal(t, 200, resp.StatusCode)
	}
	resp, body := do(t, c, "GET", ts.URL+"/metrics", "")
	require.Equal(t, 200, resp.StatusCode)
	var ours []string
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, "redisservice_") && !strings.Contains(l, "_bucket{") {
			ours = append(ours, l)
		}
	}
	text := strings.Join(ours, "\n")
	assert.Regexp(t, `redisservice_cache_requests_total\{[^}]*redisservice_cache_result="miss"\} 1\n`, text+"\n")
	assert.Regexp(t, `redisservice_cache_requests_total\{[^}]*redisservice_cache_result="hit"\} 2\n`, text+"\n")
	assert.Regexp(t, `redisservice_ratelimit_decisions_total\{[^}]*redisservice_ratelimit_decision="allowed"\} 3\n`, text+"\n")
	assert.Regexp(t, `redisservice_operations_total\{[^}]*redisservice_op="ratelimit",redisservice_outcome="ok"\} 3\n`, text+"\n")
	assert.Regexp(t, `redisservice_operation_duration_seconds_count\{[^}]*redisservice_op="cache"\} `, text)
	assert.Regexp(t, `redisservice_pool_connections\{[^}]*redisservice_pool_state="idle"\} `, text)
	assert.NotContains(t, body, "products:all", "no key in the metrics")
}

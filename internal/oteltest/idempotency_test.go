package oteltest_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vevurn/redisservice"
)

// TestIdempotencyOutcomes: every outcome of a request under the
// Idempotency-Key middleware is counted once, under its name: stored,
// replayed, mismatch (422), conflict (409), freed (a 5xx), corrupt (a
// stored response that does not decode: 409), store_failed (the lease
// lost, or Redis gone, before the response was stored), and with Redis
// gone unavailable (503) or, with FailOpen, fail_open.
func TestIdempotencyOutcomes(t *testing.T) {
	t.Parallel()
	o := newObserved(t, redisservice.Options{Timeout: 300 * time.Millisecond, MaxRetries: -1})
	started, release := make(chan struct{}), make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/slow":
			close(started)
			<-release
		case "/fail":
			w.WriteHeader(http.StatusBadGateway)
			return
		case "/steal":
			// The lease is lost while the handler runs: the store finds
			// another's mark.
			o.mr.Set("idem:0::"+r.Header.Get("Idempotency-Key"), "R"+strings.Repeat("0", 64)+"another")
		case "/stop":
			o.mr.Close() // Redis is gone before the store
		}
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write([]byte(`{"id":"pay_1"}`))
	})
	guarded := o.svc.IdempotencyMiddleware(redisservice.IdempotencyConfig{})(h)
	open := o.svc.IdempotencyMiddleware(redisservice.IdempotencyConfig{FailOpen: true})(h)
	post := func(h http.Handler, path, key, body string) int {
		r := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
		r.Header.Set("Idempotency-Key", key)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code
	}

	require.Equal(t, http.StatusCreated, post(guarded, "/pay", "k1", "a"), "first request")
	require.Equal(t, http.StatusCreated, post(guarded, "/pay", "k1", "a"), "replay")
	require.Equal(t, http.StatusUnprocessableEntity, post(guarded, "/pay", "k1", "b"), "same key, another body")
	require.Equal(t, http.StatusBadGateway, post(guarded, "/fail", "k2", "a"), "a 5xx")

	slow := make(chan int, 1)
	go func() { slow <- post(guarded, "/slow", "k3", "a") }()
	<-started
	require.Equal(t, http.StatusConflict, post(guarded, "/slow", "k3", "a"), "while the first runs")
	close(release)
	require.Equal(t, http.StatusCreated, <-slow, "the held request")

	// A stored response that no longer decodes (junk written over it) is
	// dropped and answered 409, counted as corrupt; the retry runs again.
	require.Equal(t, http.StatusCreated, post(guarded, "/pay", "k6", "a"), "first request")
	const record = "idem:0::k6"
	stored, err := o.mr.Get(record)
	require.NoError(t, err)
	require.Greater(t, len(stored), 65, "the stored record")
	require.Equal(t, byte('D'), stored[0], "the stored record")
	require.NoError(t, o.mr.Set(record, stored[:65]+"not a stored response"))
	require.Equal(t, http.StatusConflict, post(guarded, "/pay", "k6", "a"), "an undecodable record")
	require.False(t, o.mr.Exists(record), "the undecodable record is dropped")
	require.Equal(t, http.StatusCreated, post(guarded, "/pay", "k6", "a"), "the retry runs again")

	// A response that could not be stored has been sent all the same, and
	// is counted as store_failed: the lease lost, or Redis gone.
	require.Equal(t, http.StatusCreated, post(guarded, "/steal", "k7", "a"), "lease lost")
	require.Equal(t, http.StatusUnprocessableEntity, post(guarded, "/steal", "k7", "a"), "the other request's mark stays, and Redis is not taken for down")
	require.Equal(t, http.StatusCreated, post(guarded, "/stop", "k8", "a"), "Redis gone mid-handler")

	require.Equal(t, http.StatusServiceUnavailable, post(guarded, "/pay", "k4", "a"), "Redis gone")
	require.Equal(t, http.StatusCreated, post(open, "/pay", "k5", "a"), "Redis gone, FailOpen")

	assert.Equal(t, map[string]int64{
		"redisservice.idempotency.outcome=stored":       4,
		"redisservice.idempotency.outcome=store_failed": 2,
		"redisservice.idempotency.outcome=replayed":     1,
		"redisservice.idempotency.outcome=mismatch":     2,
		"redisservice.idempotency.outcome=conflict":     1,
		"redisservice.idempotency.outcome=freed":        1,
		"redisservice.idempotency.outcome=unavailable":  1,
		"redisservice.idempotency.outcome=fail_open":    1,
		"redisservice.idempotency.outcome=corrupt":      1,
	}, o.sums(t, "redisservice.idempotency.requests"))
}

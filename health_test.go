package redisservice

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestFlushAll(t *testing.T) {
	t.Parallel()
	// miniredis only: the suite never flushes a real server.
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{})
	ctx := ctxT(t)
	mustSet(t, s, "k", "v")
	assert.ErrorIs(t, s.FlushAll(ctx), ErrFlushDisabled, "FlushAll without AllowFlushAll")
	ok, _ := s.Exists(ctx, "k")
	require.True(t, ok, "refused FlushAll deleted keys")
	s2 := b.service(t, Options{AllowFlushAll: true})
	require.NoError(t, s2.FlushAll(ctx), "FlushAll")
	ok, _ = s.Exists(ctx, "k")
	assert.False(t, ok, "key survived FlushAll")
}

func TestHealth(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		require.NoError(t, s.Connect(ctx))
		assert.NoError(t, s.HealthCheck(ctx))
		rec := httptest.NewRecorder()
		start := time.Now()
		s.HealthHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
		took := time.Since(start)
		var rep HealthReport
		require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &rep), "health body %q", rec.Body)
		assert.Equal(t, http.StatusOK, rec.Code)
		assert.Equal(t, "ok", rep.Status)
		assert.True(t, rep.LatencyMS > 0 && rep.LatencyMS <= float64(took.Microseconds())/1000, "latencyMs %v; want in (0, %v]", rep.LatencyMS, took)
		assert.Equal(t, "application/json", rec.Header().Get("Content-Type"))
		info, err := s.Info(ctx, "clients") // the one section miniredis has
		require.NoError(t, err)
		assert.NotEmpty(t, info["connected_clients"])
	})
}

func TestHealthHandlerDown(t *testing.T) {
	t.Parallel()
	s := newService(t, Options{URL: "redis://:hunter2@" + closedPort(t), Timeout: 500 * time.Millisecond})
	rec := httptest.NewRecorder()
	s.HealthHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	assert.Equal(t, http.StatusServiceUnavailable, rec.Code)
	assert.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	assert.Contains(t, rec.Body.String(), `"status":"unavailable"`)
	assert.NotContains(t, rec.Body.String(), "hunter2")
}

func TestStatsCountHitsAndMisses(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{})
	ctx := ctxT(t)
	mustSet(t, s, "a", "1")
	s.Get(ctx, "a")
	s.Get(ctx, "b")
	s.MGet(ctx, "a", "b", "c")
	st := s.Stats()
	assert.True(t, st.Hits == 2 && st.Misses == 3 && st.Errors == 0 && st.Connected,
		"Stats = %+v; want 2 hits, 3 misses, 0 errors, connected", st)
	assert.NotZero(t, st.Pool.TotalConns, "Stats.Pool = %+v; want the pool's figures", st.Pool)
}

// TestHealthHandlerHidesTheCause: the 503 body says only that Redis is
// unavailable and how long the check took; the cause (an address, a
// server's reply) goes to the logger.
func TestHealthHandlerHidesTheCause(t *testing.T) {
	t.Parallel()
	srv := startRedisServer(t, "--requirepass", "right-pw")
	refused := closedPort(t)
	for _, c := range []struct {
		name, url string
		detail    []string // in the log line, never in the body
	}{
		{"refused", "redis://" + refused, []string{"connection refused", refused}},
		{"wrong password", "redis://:wrong-pw@" + srv.addr(), []string{"WRONGPASS"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			logs := &syncWriter{w: new(bytes.Buffer)}
			s := newService(t, Options{URL: c.url, Timeout: time.Second, Logger: slog.New(slog.NewTextHandler(logs, nil))})
			rec := httptest.NewRecorder()
			start := time.Now()
			s.HealthHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
			took := time.Since(start)

			require.Equal(t, http.StatusServiceUnavailable, rec.Code)
			var body map[string]any
			require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &body), "body %s", rec.Body)
			assert.Equal(t, "unavailable", body["status"])
			assert.ElementsMatch(t, []string{"status", "latencyMs"}, slices.Collect(maps.Keys(body)), "body %s", rec.Body)
			ms, ok := body["latencyMs"].(float64)
			assert.True(t, ok && ms > 0 && ms <= float64(took.Microseconds())/1000, "latencyMs %v; want in (0, %v]", body["latencyMs"], took)
			for _, d := range c.detail {
				assert.NotContains(t, rec.Body.String(), d)
				assert.Contains(t, logs.String(), d, "the log line of the failed check")
			}
			assert.NotContains(t, rec.Body.String(), "127.0.0.1")
			assert.NotContains(t, logs.String(), "wrong-pw")
		})
	}
}

// TestStatsHitsAndMissesAsDocumented: each lookup Stats.Hits names counts
// one hit or one miss (MGet one per key), and the other calls count
// neither.
func TestStatsHitsAndMissesAsDocumented(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		mustSet(t, s, "s", "1")
		mustSet(t, s, "bad", "{")
		require.NoError(t, s.HSet(ctx, "h", "f", "v"))
		id, err := NewSessionID()
		require.NoError(t, err)
		require.NoError(t, s.CreateSession(ctx, id, SessionData{UserID: "u"}, time.Minute))
		load := func(context.Context) (int, error) { return 1, nil }
		_, err = Cache(ctx, s, "c", time.Minute, load) // a miss, then stored
		require.NoError(t, err)
		_, err = Cache(ctx, s, "nf", time.Minute, func(context.Context) (int, error) { return 0, ErrNotFound }, NotFoundTTL(time.Minute))
		require.ErrorIs(t, err, ErrNotFound)

		var dst map[string]any
		for _, c := range []struct {
			name         string
			call         func()
			hits, misses uint64
		}{
			{"Get", func() { _, _, _ = s.Get(ctx, "s") }, 1, 0},
			{"Get missing", func() { _, _, _ = s.Get(ctx, "none") }, 0, 1},
			{"GetJSON", func() { _, _ = s.GetJSON(ctx, "s", &dst) }, 1, 0},
			{"GetJSON undecodable", func() { _, _ = s.GetJSON(ctx, "bad", &dst) }, 1, 0},
			{"HGet", func() { _, _, _ = s.HGet(ctx, "h", "f") }, 1, 0},
			{"HGet missing field", func() { _, _, _ = s.HGet(ctx, "h", "g") }, 0, 1},
			{"HGetAll", func() { _, _ = s.HGetAll(ctx, "h") }, 1, 0},
			{"HGetAll missing", func() { _, _ = s.HGetAll(ctx, "none") }, 0, 1},
			{"MGet", func() { _, _ = s.MGet(ctx, "s", "none", "h") }, 1, 2},
			{"Cache", func() { _, _ = Cache(ctx, s, "c", time.Minute, load) }, 1, 0},
			{"Cache not found", func() { _, _ = Cache(ctx, s, "nf", time.Minute, load, NotFoundTTL(time.Minute)) }, 1, 0},
			{"Cache undecodable", func() { _, _ = Cache(ctx, s, "bad", time.Minute, load) }, 0, 1},
			{"GetSession", func() { _, _, _ = s.GetSession(ctx, id) }, 1, 0},
			{"UpdateSession", func() { _, _ = s.UpdateSession(ctx, id, func(*SessionData) error { return nil }) }, 1, 0},
			{"Exists", func() { _, _ = s.Exists(ctx, "s") }, 0, 0},
			{"TTL", func() { _, _ = s.TTL(ctx, "s") }, 0, 0},
			{"UpdateSessionActivity", func() { _, _ = s.UpdateSessionActivity(ctx, id) }, 0, 0},
		} {
			before := s.Stats()
			c.call()
			after := s.Stats()
			assert.Equal(t, c.hits, after.Hits-before.Hits, "%s: hits", c.name)
			assert.Equal(t, c.misses, after.Misses-before.Misses, "%s: misses", c.name)
		}
	})
}

package redisservice

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
)

func TestFlushAll(t *testing.T) {
	t.Parallel()
	// miniredis only: the suite never flushes a real server.
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{})
	ctx := ctxT(t)
	mustSet(t, s, "k", "v")
	if err := s.FlushAll(ctx); !errors.Is(err, ErrFlushDisabled) {
		t.Errorf("FlushAll without AllowFlushAll = %v; want ErrFlushDisabled", err)
	}
	if ok, _ := s.Exists(ctx, "k"); !ok {
		t.Fatalf("refused FlushAll deleted keys")
	}
	s2 := b.service(t, Options{AllowFlushAll: true})
	if err := s2.FlushAll(ctx); err != nil {
		t.Fatalf("FlushAll = %v", err)
	}
	if ok, _ := s.Exists(ctx, "k"); ok {
		t.Errorf("key survived FlushAll")
	}
}

func TestHealth(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		if err := s.Connect(ctx); err != nil {
			t.Fatalf("Connect = %v", err)
		}
		if err := s.HealthCheck(ctx); err != nil {
			t.Errorf("HealthCheck = %v", err)
		}
		rec := httptest.NewRecorder()
		s.HealthHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
		var rep HealthReport
		if err := json.Unmarshal(rec.Body.Bytes(), &rep); err != nil {
			t.Fatalf("health body %q: %v", rec.Body, err)
		}
		if rec.Code != http.StatusOK || rep.Status != "ok" || rep.LatencyMS < 0 {
			t.Errorf("HealthHandler = %d %+v; want 200 ok", rec.Code, rep)
		}
		if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type = %q; want application/json", ct)
		}
		info, err := s.Info(ctx, "clients") // the one section miniredis has
		if err != nil || info["connected_clients"] == "" {
			t.Errorf("Info(clients) = %v, %v; want connected_clients", info, err)
		}
	})
}

func TestHealthHandlerDown(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	s, err := New(Options{URL: "redis://:hunter2@" + mr.Addr(), Timeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	mr.RequireAuth("hunter2")
	mr.Close()
	rec := httptest.NewRecorder()
	s.HealthHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Content-Type") != "application/json" {
		t.Errorf("HealthHandler with Redis down = %d %q; want 503 application/json", rec.Code, rec.Header().Get("Content-Type"))
	}
	if !strings.Contains(rec.Body.String(), `"status":"unavailable"`) || strings.Contains(rec.Body.String(), "hunter2") {
		t.Errorf("HealthHandler body = %s", rec.Body)
	}
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
	if st.Hits != 2 || st.Misses != 3 || st.Errors != 0 || !st.Connected {
		t.Errorf("Stats = %+v; want 2 hits, 3 misses, 0 errors, connected", st)
	}
	if st.Pool.TotalConns == 0 {
		t.Errorf("Stats.Pool = %+v; want the pool's figures", st.Pool)
	}
}

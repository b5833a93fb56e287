package redisservice

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The tests in this file run against redis-server processes of their own,
// which they kill, stall and restart. README.md "Behaviour under failure"
// lists what they prove.

func TestRedisDownAtStart(t *testing.T) {
	t.Parallel()
	port := freePort(t) // nothing listens here
	s, err := New(Options{URL: "redis://:pw-down-at-start@127.0.0.1:" + strconv.Itoa(port), Timeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatalf("New with Redis down = %v; want nil (New does not dial)", err)
	}
	defer s.Close()
	ctx := context.Background()
	bound := 2 * time.Second

	within(t, bound, "Connect", func() {
		if err := s.Connect(ctx); err == nil {
			t.Error("Connect with Redis down = nil")
		}
	})
	if s.IsConnected() {
		t.Error("IsConnected after a failed Connect = true")
	}
	within(t, bound, "Get", func() {
		if v, found, err := s.Get(ctx, "k"); v != "" || found || err == nil {
			t.Errorf("Get = %q, %v, %v; want the miss fallback and an error", v, found, err)
		}
	})
	within(t, bound, "Set", func() {
		if ok, err := s.Set(ctx, "k", "v"); ok || err == nil {
			t.Errorf("Set = %v, %v; want false and an error", ok, err)
		}
	})
	within(t, bound, "HGetAll", func() {
		if m, err := s.HGetAll(ctx, "k"); m == nil || len(m) != 0 || err == nil {
			t.Errorf("HGetAll = %#v, %v; want an empty map and an error", m, err)
		}
	})
	within(t, bound, "MGet", func() {
		if m, err := s.MGet(ctx, "a", "b"); m == nil || len(m) != 0 || err == nil {
			t.Errorf("MGet = %#v, %v; want an empty map and an error", m, err)
		}
	})
	within(t, bound, "CheckRateLimit", func() {
		if r, err := s.CheckRateLimit(ctx, "ip", time.Minute, 10); !r.Allowed || err == nil {
			t.Errorf("CheckRateLimit = %+v, %v; want allowed (fail open) and an error", r, err)
		}
	})
	within(t, bound, "Cache", func() {
		v, err := Cache(ctx, s, "products", time.Minute, func(context.Context) (string, error) { return "from db", nil })
		if v != "from db" || err == nil {
			t.Errorf("Cache = %q, %v; want the loader's value and an error", v, err)
		}
	})
	within(t, bound, "HealthCheck", func() {
		if err := s.HealthCheck(ctx); err == nil {
			t.Error("HealthCheck with Redis down = nil")
		}
	})
	if st := s.Stats(); st.Errors == 0 || st.Fallbacks == 0 || st.Connected {
		t.Errorf("Stats = %+v; want errors and fallbacks counted, not connected", st)
	}
}

func TestRedisKilledDuringLoadAndRestarted(t *testing.T) {
	t.Parallel()
	srv := startRedisServer(t)
	s, err := New(Options{URL: srv.url(), Timeout: 300 * time.Millisecond, PoolSize: 8})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Connect(context.Background()); err != nil {
		t.Fatal(err)
	}

	var calls, failures atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				key := fmt.Sprintf("load:%d:%d", g, i%50)
				start := time.Now()
				_, err1 := s.Set(ctx, key, i, WithTTL(time.Minute))
				_, _, err2 := s.Get(ctx, key)
				if took := time.Since(start); took > 6*time.Second { // 10x two calls' Timeout
					t.Errorf("a Set+Get pair took %v during the outage; want it bounded", took)
				}
				calls.Add(2)
				if err1 != nil || err2 != nil {
					failures.Add(1)
				}
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	srv.kill()
	down := time.Now().Add(10 * time.Second)
	for s.IsConnected() {
		if time.Now().After(down) {
			t.Error("IsConnected still true 10s after Redis was killed under load")
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	srv.start() // same port, empty dataset
	time.Sleep(700 * time.Millisecond)
	close(stop)
	wg.Wait()

	if failures.Load() == 0 || s.Stats().Errors == 0 {
		t.Errorf("%d calls, %d failing pairs, Stats %+v; want the outage seen and counted", calls.Load(), failures.Load(), s.Stats())
	}
	// Recovery without a new Service.
	deadline := time.Now().Add(waitDeadline)
	for {
		_, err := s.Set(context.Background(), "after", "v")
		if err == nil && s.IsConnected() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no recovery within %v after the restart: %v", waitDeadline, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if v, found, err := s.Get(context.Background(), "after"); v != "v" || !found || err != nil {
		t.Errorf("Get after recovery = %q, %v, %v", v, found, err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close = %v", err)
	}
}

func TestStalledServer(t *testing.T) {
	t.Parallel()
	srv := startRedisServer(t)
	s := newService(t, Options{URL: srv.url(), Timeout: 200 * time.Millisecond})
	require.NoError(t, s.Connect(context.Background()))
	stall(t, srv, 20*time.Second) // until cleanup kills the server

	// A caller's own deadline bounds its call, and says nothing about
	// Redis: the calls after it still ask Redis.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	within(t, time.Second, "Set with a 100ms deadline", func() {
		_, err := s.Set(ctx, "k", "v")
		assert.ErrorIs(t, err, context.DeadlineExceeded)
	})
	assert.True(t, s.IsConnected(), "IsConnected after a call ended by its caller's own deadline")

	// Every kind of call, with Options.Timeout 200ms and no deadline of
	// the caller's, returns its fallback by the bound.
	calls := []struct {
		name string
		call func(context.Context) error
	}{
		{"Get", func(ctx context.Context) error { _, _, err := s.Get(ctx, "k"); return err }},
		{"MGet", func(ctx context.Context) error { _, err := s.MGet(ctx, "a", "b"); return err }},
		{"HGetAll", func(ctx context.Context) error { _, err := s.HGetAll(ctx, "h"); return err }},
		{"CheckRateLimit", func(ctx context.Context) error {
			r, err := s.CheckRateLimit(ctx, "ip", time.Minute, 5)
			assert.True(t, r.Allowed, "CheckRateLimit on a stalled server = %+v; want allowed (fail open)", r)
			return err
		}},
		{"HealthCheck", func(ctx context.Context) error { return s.HealthCheck(ctx) }},
		{"Connect", func(ctx context.Context) error { return s.Connect(ctx) }},
		{"Cache", func(ctx context.Context) error {
			v, err := Cache(ctx, s, "c", time.Minute, func(context.Context) (string, error) { return "loaded", nil })
			assert.Equal(t, "loaded", v, "Cache on a stalled server")
			return err
		}},
	}
	for _, c := range calls {
		within(t, 2*time.Second, c.name+" on a stalled server with Options.Timeout 200ms", func() {
			// The first call times out; the calls after it fail fast.
			err := c.call(context.Background())
			assert.True(t, errors.Is(err, context.DeadlineExceeded) || isTimeout(err) || errors.Is(err, ErrUnavailable),
				"%s = %v; want a deadline, timeout or ErrUnavailable error", c.name, err)
		})
	}
	assert.False(t, s.IsConnected(), "IsConnected after calls timed out on a stalled server")
}

func TestPoolExhaustedAndCancelledMidCall(t *testing.T) {
	t.Parallel()
	srv := startRedisServer(t)
	s, err := New(Options{URL: srv.url(), PoolSize: 1, PoolTimeout: 100 * time.Millisecond, Timeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if err := s.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	// Hold the only connection of the pool in a BLPOP that ends when the
	// test pushes to its key, however long the Gets below take.
	held := make(chan struct{})
	go func() {
		defer close(held)
		_ = s.Client().BLPop(ctx, 0, "held").Err()
	}()
	deadline := time.Now().Add(2 * time.Second)
	for s.Client().PoolStats().IdleConns != 0 || s.Client().PoolStats().TotalConns == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the slow command never took the connection")
		}
		time.Sleep(5 * time.Millisecond)
	}
	_, _, err = s.Get(ctx, "k")
	if !errors.Is(err, redis.ErrPoolTimeout) {
		t.Errorf("Get with the pool exhausted = %v; want redis.ErrPoolTimeout", err)
	}

	cctx, cancel := context.WithCancel(ctx)
	time.AfterFunc(50*time.Millisecond, cancel)
	if _, _, err := s.Get(cctx, "k"); !errors.Is(err, context.Canceled) {
		t.Errorf("Get cancelled while waiting = %v; want context.Canceled", err)
	}
	release := redis.NewClient(&redis.Options{Addr: srv.addr()})
	defer release.Close()
	if err := release.LPush(ctx, "held", "done").Err(); err != nil {
		t.Fatal(err)
	}
	<-held
	if _, err := s.Set(ctx, "k", "v"); err != nil {
		t.Errorf("Set after the pool freed up = %v; want the pool intact", err)
	}
	if !s.IsConnected() {
		t.Errorf("IsConnected = false after a cancelled call and a pool timeout; Redis was up")
	}
}

func TestClusterWithAMasterDown(t *testing.T) {
	t.Parallel()
	args := []string{"--cluster-enabled", "yes", "--cluster-node-timeout", "1000", "--cluster-require-full-coverage", "no"}
	nodes := make([]*redisServer, 3)
	addrs := make([]string, 3)
	for i := range nodes {
		nodes[i] = startRedisServer(t, args...)
		addrs[i] = nodes[i].addr()
	}
	create := exec.Command("redis-cli", append(append([]string{"--cluster", "create"}, addrs...), "--cluster-replicas", "0", "--cluster-yes")...)
	if out, err := create.CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs, ContextTimeoutEnabled: true,
		MaxRetries: 1, DialTimeout: 200 * time.Millisecond, ReadTimeout: 300 * time.Millisecond})
	t.Cleanup(func() { cc.Close() })
	ctx := context.Background()
	deadline := time.Now().Add(10 * time.Second)
	for cc.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
		if info := n.ClusterInfo(ctx).Val(); !strings.Contains(info, "cluster_state:ok") {
			return errors.New("not ok yet")
		}
		return nil
	}) != nil || len(cc.ClusterShards(ctx).Val()) != 3 {
		if time.Now().After(deadline) {
			t.Fatal("cluster never reached cluster_state:ok")
		}
		time.Sleep(50 * time.Millisecond)
	}
	s, err := New(Options{Client: cc, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	keys := make([]string, 60)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%d", i)
		if _, err := s.Set(ctx, keys[i], i); err != nil {
			t.Fatalf("Set(%s) before the fault: %v", keys[i], err)
		}
	}
	// Stop the master that owns k0.
	owner, err := cc.MasterForKey(ctx, "k0")
	if err != nil {
		t.Fatal(err)
	}
	victim := owner.Options().Addr
	for _, n := range nodes {
		if n.addr() == victim {
			n.kill()
		}
	}

	var ok, failed int
	within(t, 60*time.Second, "60 Gets with one master down", func() {
		for _, k := range keys {
			start := time.Now()
			_, found, err := s.Get(ctx, k)
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("Get(%s) took %v; want failure or success within the bound", k, took)
			}
			switch {
			case err == nil && found:
				ok++
			case err != nil:
				failed++
			default:
				t.Errorf("Get(%s) = not found, nil error; a live key vanished", k)
			}
		}
	})
	if ok == 0 || failed == 0 || ok+failed != len(keys) {
		t.Errorf("with one of 3 masters down: %d Gets ok, %d failed; want both, the failures on the stopped master's slots", ok, failed)
	}
	if _, _, err := s.Get(ctx, "k0"); err == nil {
		t.Errorf("Get(k0) on the stopped master = nil error")
	}
	within(t, 3*time.Second, "HealthCheck with one master down", func() {
		if err := s.HealthCheck(ctx); err == nil {
			t.Error("HealthCheck with one of 3 masters down = nil; want an error")
		}
	})
}

func TestNoPasswordInErrorsLogsOrStats(t *testing.T) {
	t.Parallel()
	const password = "Sup3r-S3cret-pw"
	logs := &syncWriter{w: new(bytes.Buffer)}
	port := freePort(t) // nothing listens
	s, err := New(Options{
		URL:     "redis://app:" + password + "@127.0.0.1:" + strconv.Itoa(port) + "/3",
		Timeout: 300 * time.Millisecond,
		Logger:  slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	var errs []error
	errs = append(errs, s.Connect(ctx), s.HealthCheck(ctx))
	_, _, err = s.Get(ctx, "k")
	errs = append(errs, err)
	_, err = s.CheckRateLimit(ctx, "ip", time.Minute, 1)
	errs = append(errs, err)
	_, err = s.Info(ctx)
	errs = append(errs, err)
	_, err = Cache(ctx, s, "k", time.Minute, func(context.Context) (int, error) { return 1, nil })
	errs = append(errs, err)
	for _, err := range errs {
		if err == nil || strings.Contains(err.Error(), password) || strings.Contains(fmt.Sprintf("%+v", err), password) {
			t.Errorf("error %v: want an error without the password", err)
		}
	}
	if strings.Contains(logs.String(), password) || !strings.Contains(logs.String(), "redis call failed") {
		t.Errorf("logs %q: want failures logged without the password", logs.String())
	}
	rec := httptest.NewRecorder()
	s.HealthHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	if body := rec.Body.String(); rec.Code != http.StatusServiceUnavailable || strings.Contains(body, password) {
		t.Errorf("HealthHandler = %d %q; want 503 without the password", rec.Code, body)
	}
	if st := fmt.Sprintf("%+v", s.Stats()); strings.Contains(st, password) {
		t.Errorf("Stats %s holds the password", st)
	}
}

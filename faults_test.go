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
	require.NoError(t, err, "New with Redis down; want nil (New does not dial)")
	defer s.Close()
	ctx := context.Background()
	bound := 2 * time.Second

	within(t, bound, "Connect", func() {
		assert.Error(t, s.Connect(ctx), "Connect with Redis down")
	})
	assert.False(t, s.IsConnected(), "IsConnected after a failed Connect")
	within(t, bound, "Get", func() {
		v, found, err := s.Get(ctx, "k")
		assert.Error(t, err, "Get; want the miss fallback and an error")
		assert.False(t, found, "Get; want the miss fallback and an error")
		assert.Empty(t, v, "Get; want the miss fallback and an error")
	})
	within(t, bound, "Set", func() {
		ok, err := s.Set(ctx, "k", "v")
		assert.Error(t, err, "Set; want false and an error")
		assert.False(t, ok, "Set; want false and an error")
	})
	within(t, bound, "HGetAll", func() {
		m, err := s.HGetAll(ctx, "k")
		assert.Error(t, err, "HGetAll; want an empty map and an error")
		assert.NotNil(t, m, "HGetAll; want an empty map and an error")
		assert.Empty(t, m, "HGetAll; want an empty map and an error")
	})
	within(t, bound, "MGet", func() {
		m, err := s.MGet(ctx, "a", "b")
		assert.Error(t, err, "MGet; want an empty map and an error")
		assert.NotNil(t, m, "MGet; want an empty map and an error")
		assert.Empty(t, m, "MGet; want an empty map and an error")
	})
	within(t, bound, "CheckRateLimit", func() {
		r, err := s.CheckRateLimit(ctx, "ip", time.Minute, 10)
		assert.Error(t, err, "CheckRateLimit; want allowed (fail open) and an error")
		assert.True(t, r.Allowed, "CheckRateLimit = %+v; want allowed (fail open) and an error", r)
	})
	within(t, bound, "Cache", func() {
		v, err := Cache(ctx, s, "products", time.Minute, func(context.Context) (string, error) { return "from db", nil })
		assert.Error(t, err, "Cache; want the loader's value and an error")
		assert.Equal(t, "from db", v, "Cache; want the loader's value and an error")
	})
	within(t, bound, "HealthCheck", func() {
		assert.Error(t, s.HealthCheck(ctx), "HealthCheck with Redis down")
	})
	st := s.Stats()
	assert.True(t, st.Errors != 0 && st.Fallbacks != 0 && !st.Connected,
		"Stats = %+v; want errors and fallbacks counted, not connected", st)
}

func TestRedisKilledDuringLoadAndRestarted(t *testing.T) {
	t.Parallel()
	srv := startRedisServer(t)
	s, err := New(Options{URL: srv.url(), Timeout: 300 * time.Millisecond, PoolSize: 8})
	require.NoError(t, err)
	require.NoError(t, s.Connect(context.Background()))

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
				// Not require: this is not the test's goroutine.
				assert.LessOrEqual(t, time.Since(start), 6*time.Second, // 10x two calls' Timeout
					"a Set+Get pair took too long during the outage; want it bounded")
				calls.Add(2)
				if err1 != nil || err2 != nil {
					failures.Add(1)
				}
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	srv.kill()
	assert.Eventually(t, func() bool { return !s.IsConnected() }, 10*time.Second, 10*time.Millisecond,
		"IsConnected still true 10s after Redis was killed under load")
	time.Sleep(300 * time.Millisecond)
	srv.start() // same port, empty dataset
	time.Sleep(700 * time.Millisecond)
	close(stop)
	wg.Wait()

	assert.True(t, failures.Load() != 0 && s.Stats().Errors != 0,
		"%d calls, %d failing pairs, Stats %+v; want the outage seen and counted", calls.Load(), failures.Load(), s.Stats())
	// Recovery without a new Service.
	deadline := time.Now().Add(waitDeadline)
	for {
		_, err := s.Set(context.Background(), "after", "v")
		if err == nil && s.IsConnected() {
			break
		}
		if time.Now().After(deadline) {
			require.Failf(t, "no recovery", "no recovery within %v after the restart: %v", waitDeadline, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	v, found, err := s.Get(context.Background(), "after")
	assert.NoError(t, err, "Get after recovery")
	assert.True(t, found, "Get after recovery")
	assert.Equal(t, "v", v, "Get after recovery")
	assert.NoError(t, s.Close(), "Close")
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
	require.NoError(t, err)
	defer s.Close()
	ctx := context.Background()
	require.NoError(t, s.Connect(ctx))
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
			require.Fail(t, "the slow command never took the connection")
		}
		time.Sleep(5 * time.Millisecond)
	}
	_, _, err = s.Get(ctx, "k")
	assert.ErrorIs(t, err, redis.ErrPoolTimeout, "Get with the pool exhausted")

	cctx, cancel := context.WithCancel(ctx)
	time.AfterFunc(50*time.Millisecond, cancel)
	_, _, err = s.Get(cctx, "k")
	assert.ErrorIs(t, err, context.Canceled, "Get cancelled while waiting")
	release := redis.NewClient(&redis.Options{Addr: srv.addr()})
	defer release.Close()
	require.NoError(t, release.LPush(ctx, "held", "done").Err())
	<-held
	_, err = s.Set(ctx, "k", "v")
	assert.NoError(t, err, "Set after the pool freed up; want the pool intact")
	assert.True(t, s.IsConnected(), "IsConnected after a cancelled call and a pool timeout; Redis was up")
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
	out, err := create.CombinedOutput()
	require.NoError(t, err, "redis-cli --cluster create: %s", out)
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
			require.Fail(t, "cluster never reached cluster_state:ok")
		}
		time.Sleep(50 * time.Millisecond)
	}
	s, err := New(Options{Client: cc, Timeout: time.Second})
	require.NoError(t, err)
	defer s.Close()
	keys := make([]string, 60)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%d", i)
		_, err := s.Set(ctx, keys[i], i)
		require.NoError(t, err, "Set(%s) before the fault", keys[i])
	}
	// Stop the master that owns k0.
	owner, err := cc.MasterForKey(ctx, "k0")
	require.NoError(t, err)
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
			took := time.Since(start)
			assert.LessOrEqual(t, took, 5*time.Second, "Get(%s); want failure or success within the bound", k)
			switch {
			case err == nil && found:
				ok++
			case err != nil:
				failed++
			default:
				assert.Fail(t, "a live key vanished", "Get(%s) = not found, nil error", k)
			}
		}
	})
	assert.True(t, ok != 0 && failed != 0 && ok+failed == len(keys),
		"with one of 3 masters down: %d Gets ok, %d failed; want both, the failures on the stopped master's slots", ok, failed)
	_, _, err = s.Get(ctx, "k0")
	assert.Error(t, err, "Get(k0) on the stopped master")
	within(t, 3*time.Second, "HealthCheck with one master down", func() {
		assert.Error(t, s.HealthCheck(ctx), "HealthCheck with one of 3 masters down; want an error")
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
	require.NoError(t, err)
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
		if assert.Error(t, err, "want an error without the password") {
			assert.NotContains(t, err.Error(), password, "error: want an error without the password")
			assert.NotContains(t, fmt.Sprintf("%+v", err), password, "verbose error: want it without the password")
		}
	}
	assert.NotContains(t, logs.String(), password, "logs: want failures logged without the password")
	assert.Contains(t, logs.String(), "redis call failed", "logs: want failures logged without the password")
	rec := httptest.NewRecorder()
	s.HealthHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	assert.Equal(t, http.StatusServiceUnavailable, rec.Code, "HealthHandler; want 503 without the password")
	assert.NotContains(t, rec.Body.String(), password, "HealthHandler; want 503 without the password")
	assert.NotContains(t, fmt.Sprintf("%+v", s.Stats()), password, "Stats holds the password")
}

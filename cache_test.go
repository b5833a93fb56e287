package redisservice

import (
	"context"
	"errors"
	"reflect"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vevurn/redisservice/internal/flight"
)

type cachedProduct struct {
	SKU   string `json:"sku"`
	Price int    `json:"priceCents"`
}

// countingLoader is a Cache loader that counts its calls.
type countingLoader[T any] struct {
	calls atomic.Int32
	v     T
	err   error
}

func (l *countingLoader[T]) load(context.Context) (T, error) {
	l.calls.Add(1)
	return l.v, l.err
}

var errBoom = errors.New("boom")

// waitReaders waits until a read of key is in flight with n callers
// waiting for it besides the one reading.
func waitReaders(t testing.TB, s *Service, key string, n int) {
	t.Helper()
	require.Eventually(t, func() bool { return readers(s, key) == n }, 10*time.Second, time.Millisecond,
		"a read of %q in flight with %d waiters", key, n)
}

// waitWaiting waits until n callers wait for the load of k.
func waitWaiting(t testing.TB, s *Service, k flightKey, n int) {
	t.Helper()
	require.Eventually(t, func() bool { return waiting(s, k) == n }, 10*time.Second, time.Millisecond,
		"%d callers wait for the load of %q", n, k.key)
}

func TestCacheMissThenHit(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		const ttl = 750 * time.Millisecond
		l := &countingLoader[cachedProduct]{v: cachedProduct{SKU: "A-1", Price: 250}}

		got, err := Cache(ctx, s, "product:A-1", ttl, l.load)
		if got != l.v || err != nil || l.calls.Load() != 1 {
			t.Fatalf("Cache(miss) = %+v, %v after %d loads; want %+v, nil after 1", got, err, l.calls.Load(), l.v)
		}
		if raw := b.client.Get(ctx, b.raw("product:A-1")).Val(); raw != `{"sku":"A-1","priceCents":250}` {
			t.Errorf("stored value = %q; want the loader's value as plain JSON", raw)
		}
		if d := b.client.PTTL(ctx, b.raw("product:A-1")).Val(); d <= ttl-300*time.Millisecond || d > ttl {
			t.Errorf("PTTL after Cache(ttl %v) = %v; want just under %v, never more", ttl, d, ttl)
		}
		got, err = Cache(ctx, s, "product:A-1", ttl, l.load)
		if got != l.v || err != nil || l.calls.Load() != 1 {
			t.Errorf("Cache(hit) = %+v, %v after %d loads; want %+v, nil with no new load", got, err, l.calls.Load(), l.v)
		}
		if st := s.Stats(); st.Hits != 1 || st.Misses != 1 {
			t.Errorf("Stats hits, misses = %d, %d; want 1, 1", st.Hits, st.Misses)
		}

		b.pass(ttl + 50*time.Millisecond)
		b.waitFor(t, "cached value expires", func() bool { return b.client.Exists(ctx, b.raw("product:A-1")).Val() == 0 })
		if got, err = Cache(ctx, s, "product:A-1", ttl, l.load); got != l.v || err != nil || l.calls.Load() != 2 {
			t.Errorf("Cache after expiry = %+v, %v after %d loads; want a second load", got, err, l.calls.Load())
		}
	})
}

func TestCacheLoadsOncePerKey(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		const callers = 200
		var calls atomic.Int32
		release := make(chan struct{})
		load := func(context.Context) (int, error) {
			calls.Add(1)
			<-release
			return 42, nil
		}
		got := make([]int, callers)
		errs := make([]error, callers)
		var wg sync.WaitGroup
		for i := range callers {
			wg.Go(func() { got[i], errs[i] = Cache(ctx, s, "hot", time.Minute, load) })
		}
		waitWaiting(t, s, flightKey{key: "hot", typ: reflect.TypeFor[int]()}, callers)
		close(release)
		wg.Wait()
		if n := calls.Load(); n != 1 {
			t.Errorf("%d concurrent callers ran the loader %d times; want 1", callers, n)
		}
		for i := range callers {
			if got[i] != 42 || errs[i] != nil {
				t.Fatalf("caller %d: Cache = %d, %v; want 42, nil", i, got[i], errs[i])
			}
		}
		if v, err := Cache(ctx, s, "hot", time.Minute, load); v != 42 || err != nil || calls.Load() != 1 {
			t.Errorf("Cache after the shared load = %d, %v after %d loads; want a hit", v, err, calls.Load())
		}
	})
}

func TestCacheLoaderError(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		l := &countingLoader[string]{v: "ignored", err: errBoom}
		for i := 1; i <= 3; i++ {
			v, err := Cache(ctx, s, "k", time.Minute, l.load)
			if v != "" || !errors.Is(err, errBoom) {
				t.Errorf("Cache with a failing loader = %q, %v; want \"\" and the loader's error", v, err)
			}
			if n := l.calls.Load(); n != int32(i) {
				t.Errorf("after %d calls the loader ran %d times; want exactly once per call", i, n)
			}
		}
		if n := b.client.Exists(ctx, b.raw("k")).Val(); n != 0 {
			t.Errorf("a failed load cached something")
		}
		if st := s.Stats(); st.Errors != 0 {
			t.Errorf("Stats.Errors = %d after loader errors; want 0 (Redis did not fail)", st.Errors)
		}

		// Concurrent callers share one failing load.
		var calls atomic.Int32
		release := make(chan struct{})
		load := func(context.Context) (string, error) {
			calls.Add(1)
			<-release
			return "", errBoom
		}
		var wg sync.WaitGroup
		var failed atomic.Int32
		for range 20 {
			wg.Go(func() {
				if _, err := Cache(ctx, s, "shared", time.Minute, load); errors.Is(err, errBoom) {
					failed.Add(1)
				}
			})
		}
		waitWaiting(t, s, flightKey{key: "shared", typ: reflect.TypeFor[string]()}, 20)
		close(release)
		wg.Wait()
		if calls.Load() != 1 || failed.Load() != 20 {
			t.Errorf("20 callers of one failing load: %d loads, %d got its error; want 1 and 20", calls.Load(), failed.Load())
		}
	})
}

func TestCacheInvalidArguments(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{})
	ctx := ctxT(t)
	l := &countingLoader[string]{v: "v"}
	cases := []struct {
		name string
		key  string
		ttl  time.Duration
		load func(context.Context) (string, error)
		want error
	}{
		{"empty key", "", time.Minute, l.load, ErrInvalidKey},
		{"zero ttl", "k", 0, l.load, ErrInvalidTTL},
		{"negative ttl", "k", -time.Second, l.load, ErrInvalidTTL},
		{"sub-millisecond ttl", "k", 500 * time.Microsecond, l.load, ErrInvalidTTL},
		{"nil loader", "k", time.Minute, nil, ErrInvalidArgument},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if v, err := Cache(ctx, s, c.key, c.ttl, c.load); v != "" || !errors.Is(err, c.want) {
				t.Errorf("Cache(%q, %v) = %q, %v; want \"\", %v", c.key, c.ttl, v, err, c.want)
			}
		})
	}
	if n := l.calls.Load(); n != 0 {
		t.Errorf("loader ran %d times for invalid arguments; want 0", n)
	}
	if keys := b.mr.Keys(); len(keys) != 0 {
		t.Errorf("keys written for invalid arguments: %q", keys)
	}
}

func TestCacheUndecodableIsAMiss(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		cases := []struct {
			name  string
			store func(key string) error
		}{
			{"not JSON", func(k string) error { return b.client.Set(ctx, k, "<html>", 0).Err() }},
			{"type mismatch", func(k string) error { return b.client.Set(ctx, k, `{"sku":7}`, 0).Err() }},
			{"JSON array", func(k string) error { return b.client.Set(ctx, k, `[1,2]`, 0).Err() }},
			{"hash (WRONGTYPE)", func(k string) error { return b.client.HSet(ctx, k, "f", "v").Err() }},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				key := "bad:" + c.name
				if err := c.store(b.raw(key)); err != nil {
					t.Fatal(err)
				}
				l := &countingLoader[cachedProduct]{v: cachedProduct{SKU: "B-2", Price: 400}}
				if v, err := Cache(ctx, s, key, time.Minute, l.load); v != l.v || err != nil || l.calls.Load() != 1 {
					t.Errorf("Cache over an undecodable value = %+v, %v after %d loads; want the loader's value, nil, 1 load", v, err, l.calls.Load())
				}
				if raw := b.client.Get(ctx, b.raw(key)).Val(); raw != `{"sku":"B-2","priceCents":400}` {
					t.Errorf("stored value = %q; want it overwritten with the loaded JSON", raw)
				}
				if v, err := Cache(ctx, s, key, time.Minute, l.load); v != l.v || err != nil || l.calls.Load() != 1 {
					t.Errorf("second Cache = %+v, %v after %d loads; want a hit", v, err, l.calls.Load())
				}
			})
		}
	})
}

func TestCacheCancelledCallerDoesNotFailOthers(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{})
	ctx := ctxT(t)
	started := make(chan context.Context, 1)
	release := make(chan struct{})
	load := func(lctx context.Context) (string, error) {
		started <- lctx
		<-release
		return "v", nil
	}
	k := flightKey{key: "k", typ: reflect.TypeFor[string]()}

	actx, acancel := context.WithCancel(ctx)
	aErr := make(chan error, 1)
	go func() { _, err := Cache(actx, s, "k", time.Minute, load); aErr <- err }()
	lctx := <-started // the first caller started the load
	type result struct {
		v   string
		err error
	}
	bRes := make(chan result, 1)
	go func() { v, err := Cache(ctx, s, "k", time.Minute, load); bRes <- result{v, err} }()
	waitWaiting(t, s, k, 2)

	acancel()
	select {
	case err := <-aErr:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled caller's Cache error = %v; want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("cancelled caller still waits for the load")
	}
	if err := lctx.Err(); err != nil {
		t.Errorf("the shared load's ctx ended (%v) when one of two callers left; want it running", err)
	}
	close(release)
	if r := <-bRes; r.v != "v" || r.err != nil {
		t.Errorf("other caller's Cache = %q, %v; want v, nil", r.v, r.err)
	}
	if v, _ := b.mr.Get(b.raw("k")); v != `"v"` {
		t.Errorf("stored value = %q; want \"v\" as JSON", v)
	}

	// When every caller has gone, the load runs on, and a later caller
	// joins it instead of starting another.
	var loads atomic.Int32
	release2 := make(chan struct{})
	slow := func(lctx context.Context) (string, error) {
		loads.Add(1)
		started <- lctx
		<-release2
		return "slow", nil
	}
	c1, cancel1 := context.WithCancel(ctx)
	go func() { _, err := Cache(c1, s, "k2", time.Minute, slow); aErr <- err }()
	lctx = <-started
	cancel1()
	require.ErrorIs(t, <-aErr, context.Canceled, "the caller that left")
	assert.NoError(t, lctx.Err(), "the load's ctx ended when its only caller left")
	go func() { v, err := Cache(ctx, s, "k2", time.Minute, slow); bRes <- result{v, err} }()
	waitWaiting(t, s, keyOf[string]("k2"), 1)
	close(release2)
	r := <-bRes
	require.NoError(t, r.err)
	assert.Equal(t, "slow", r.v, "a caller that came while the abandoned load ran")
	assert.EqualValues(t, 1, loads.Load(), "loads")
}

func TestCacheLoadKeepsCallerValues(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{})
	type ctxKey struct{}
	ctx := context.WithValue(ctxT(t), ctxKey{}, "trace-1")
	load := func(lctx context.Context) (string, error) {
		v, _ := lctx.Value(ctxKey{}).(string)
		return v, nil
	}
	if v, err := Cache(ctx, s, "k", time.Minute, load); v != "trace-1" || err != nil {
		t.Errorf("Cache = %q, %v; want the loader to see the caller's ctx values", v, err)
	}
}

func TestCacheTypesDoNotShareLoads(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{})
	ctx := ctxT(t)
	release := make(chan struct{})
	var wg sync.WaitGroup
	var gotInt int
	var gotStr string
	wg.Go(func() {
		gotInt, _ = Cache(ctx, s, "k", time.Minute, func(context.Context) (int, error) { <-release; return 1, nil })
	})
	wg.Go(func() {
		gotStr, _ = Cache(ctx, s, "k", time.Minute, func(context.Context) (string, error) { <-release; return "one", nil })
	})
	waitWaiting(t, s, flightKey{key: "k", typ: reflect.TypeFor[int]()}, 1)
	waitWaiting(t, s, flightKey{key: "k", typ: reflect.TypeFor[string]()}, 1)
	close(release)
	wg.Wait()
	if gotInt != 1 || gotStr != "one" {
		t.Errorf("Cache[int], Cache[string] on one key = %d, %q; want 1, one", gotInt, gotStr)
	}
}

func TestCacheRedisDown(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	s, err := New(Options{URL: "redis://" + mr.Addr(), Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := ctxT(t)
	mr.Close()

	l := &countingLoader[string]{v: "fresh"}
	start := time.Now()
	v, err := Cache(ctx, s, "k", time.Minute, l.load)
	if v != "fresh" || err == nil {
		t.Fatalf("Cache with Redis down = %q, %v; want the loader's value and an error", v, err)
	}
	first := time.Since(start)
	start = time.Now()
	for range 100 {
		v, err := Cache(ctx, s, "k", time.Minute, l.load)
		if v != "fresh" || !errors.Is(err, ErrUnavailable) {
			t.Fatalf("Cache with Redis known down = %q, %v; want the loader's value and ErrUnavailable", v, err)
		}
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("100 Cache calls with Redis known down took %v (first call %v); want them not to wait for Redis", took, first)
	}
	if n := l.calls.Load(); n != 101 {
		t.Errorf("loader ran %d times for 101 calls; want 101", n)
	}

	if err := mr.Restart(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !s.IsConnected() {
		if time.Now().After(deadline) {
			t.Fatal("IsConnected did not recover")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if v, err := Cache(ctx, s, "k", time.Minute, l.load); v != "fresh" || err != nil {
		t.Errorf("Cache after Redis came back = %q, %v; want fresh, nil", v, err)
	}
	if raw, _ := mr.Get("k"); raw != `"fresh"` {
		t.Errorf("stored after recovery: %q; want \"fresh\"", raw)
	}
}

func TestCacheStalledRedis(t *testing.T) {
	t.Parallel()
	s, err := New(Options{URL: "redis://" + stalledServer(t), Timeout: 200 * time.Millisecond, MaxRetries: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := ctxT(t)
	l := &countingLoader[string]{v: "fresh"}
	start := time.Now()
	v, err := Cache(ctx, s, "k", time.Minute, l.load)
	if took := time.Since(start); v != "fresh" || took > 2*time.Second || !(errors.Is(err, context.DeadlineExceeded) || isTimeout(err)) {
		t.Fatalf("Cache against a stalled Redis = %q, %v in %v; want the loader's value and a timeout within the bound", v, err, took)
	}
	start = time.Now()
	for range 20 {
		if v, err := Cache(ctx, s, "k", time.Minute, l.load); v != "fresh" || !errors.Is(err, ErrUnavailable) {
			t.Fatalf("Cache with Redis known stalled = %q, %v; want fresh and ErrUnavailable", v, err)
		}
	}
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Errorf("20 calls after the stall was seen took %v; want no wait for the 200ms timeout", took)
	}
}

func TestCacheAfterClose(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{})
	ctx := ctxT(t)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	l := &countingLoader[string]{v: "fresh"}
	if v, err := Cache(ctx, s, "k", time.Minute, l.load); v != "fresh" || !errors.Is(err, ErrClosed) || l.calls.Load() != 1 {
		t.Errorf("Cache after Close = %q, %v after %d loads; want fresh, ErrClosed, 1 load", v, err, l.calls.Load())
	}
	failing := &countingLoader[string]{err: errBoom}
	if v, err := Cache(ctx, s, "k", time.Minute, failing.load); v != "" || !errors.Is(err, errBoom) {
		t.Errorf("Cache after Close with a failing loader = %q, %v; want \"\" and the loader's error", v, err)
	}
	if keys := b.mr.Keys(); len(keys) != 0 {
		t.Errorf("Cache after Close wrote %q", keys)
	}
}

func TestCacheUnencodableValue(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{})
	ctx := ctxT(t)
	ch := make(chan int)
	l := &countingLoader[chan int]{v: ch}
	v, err := Cache(ctx, s, "k", time.Minute, l.load)
	if v != ch || !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("Cache of a value JSON cannot encode = %v, %v; want the loader's value and ErrInvalidArgument", v, err)
	}
	if keys := b.mr.Keys(); len(keys) != 0 {
		t.Errorf("stored %q for a value JSON cannot encode", keys)
	}
}

func TestCacheEndedContext(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	l := &countingLoader[string]{v: "v"}
	if v, err := Cache(ctx, s, "k", time.Minute, l.load); v != "" || !errors.Is(err, context.Canceled) || l.calls.Load() != 0 {
		t.Errorf("Cache with a cancelled ctx = %q, %v after %d loads; want \"\", context.Canceled, no load", v, err, l.calls.Load())
	}
	if !s.IsConnected() {
		t.Errorf("IsConnected = false after the caller's own cancellation")
	}
}

// TestCacheSharedReadBoundedOnStall: callers that share a GET whose
// caller's ctx ended (a request the client gave up on) against a server
// that never answers each return within Options.Timeout of their own
// start, not twice that by reading again with a fresh bound.
func TestCacheSharedReadBoundedOnStall(t *testing.T) {
	t.Parallel()
	const timeout = 300 * time.Millisecond
	s, err := New(Options{URL: "redis://" + stalledServer(t), Timeout: timeout, MaxRetries: -1})
	require.NoError(t, err)
	defer s.Close()
	load := func(context.Context) (string, error) { return "loaded", nil }

	// The first reader's request ends with Options.Timeout, as behind an
	// HTTP server's timeout handler.
	leaderCtx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { _, _ = Cache(leaderCtx, s, "k", time.Minute, load) })
	waitReaders(t, s, "k", 0)

	const callers = 16
	took := make([]time.Duration, callers)
	vals := make([]string, callers)
	for i := range callers {
		wg.Go(func() {
			ctx, cancel := context.WithCancel(context.Background()) // a fresh request: no deadline of its own
			defer cancel()
			start := time.Now()
			vals[i], _ = Cache(ctx, s, "k", time.Minute, load)
			took[i] = time.Since(start)
		})
	}
	wg.Wait()
	const slack = 150 * time.Millisecond
	for i := range callers {
		assert.LessOrEqual(t, took[i], timeout+slack, "caller %d of a shared read on a stalled server", i)
		assert.Equal(t, "loaded", vals[i], "caller %d gets the loader's value", i)
	}
	assert.False(t, s.IsConnected(), "IsConnected after every caller timed out")
}

func TestCacheLoaderGoexit(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{})
	ctx := ctxT(t)
	release := make(chan struct{})
	load := func(context.Context) (int, error) {
		<-release
		runtime.Goexit()
		return 1, nil
	}
	const callers = 4
	errs := make(chan error, callers)
	for range callers {
		go func() {
			v, err := Cache(ctx, s, "k", time.Minute, load)
			assert.Zero(t, v)
			errs <- err
		}()
	}
	waitWaiting(t, s, flightKey{key: "k", typ: reflect.TypeFor[int]()}, callers)
	close(release)
	for range callers {
		select {
		case err := <-errs:
			require.Error(t, err, "Cache whose loader called runtime.Goexit")
			assert.ErrorIs(t, err, flight.ErrGoexit)
			assert.Contains(t, err.Error(), `redisservice: cache "k": load: runtime.Goexit`)
		case <-time.After(5 * time.Second):
			t.Fatal("a caller hangs after its loader called runtime.Goexit")
		}
	}
	v, err := Cache(ctx, s, "k", time.Minute, func(context.Context) (int, error) { return 7, nil })
	require.NoError(t, err)
	assert.Equal(t, 7, v, "Cache after a load that exited")
	assert.Equal(t, []string{b.raw("k")}, b.mr.Keys(), "only the later value stored")
}

package redisservice

import (
	"context"
	"errors"
	"fmt"
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
	waitFor(t, fmt.Sprintf("a read of %q in flight with %d waiters", key, n), func() bool { return readers(s, key) == n })
}

// waitWaiting waits until n callers wait for the load of k.
func waitWaiting(t testing.TB, s *Service, k flightKey, n int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d callers waiting for the load of %q", n, k.key), func() bool { return waiting(s, k) == n })
}

func TestCacheMissThenHit(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		// The hit below comes long before ttl, however loaded the machine.
		const ttl = 2 * time.Second
		l := &countingLoader[cachedProduct]{v: cachedProduct{SKU: "A-1", Price: 250}}

		got, err := Cache(ctx, s, "product:A-1", ttl, l.load)
		require.NoError(t, err, "Cache(miss)")
		require.Equal(t, l.v, got, "Cache(miss)")
		require.EqualValues(t, 1, l.calls.Load(), "loads after Cache(miss)")
		assert.Equal(t, `{"sku":"A-1","priceCents":250}`, b.client.Get(ctx, b.raw("product:A-1")).Val(), "stored value: the loader's value as plain JSON")
		d := b.client.PTTL(ctx, b.raw("product:A-1")).Val()
		assert.Greater(t, d, ttl-time.Second, "PTTL after Cache(ttl %v): just under it", ttl)
		assert.LessOrEqual(t, d, ttl, "PTTL after Cache(ttl %v): never more", ttl)
		got, err = Cache(ctx, s, "product:A-1", ttl, l.load)
		assert.NoError(t, err, "Cache(hit)")
		assert.Equal(t, l.v, got, "Cache(hit)")
		assert.EqualValues(t, 1, l.calls.Load(), "loads after Cache(hit): no new load")
		st := s.Stats()
		assert.EqualValues(t, 1, st.Hits, "Stats.Hits")
		assert.EqualValues(t, 1, st.Misses, "Stats.Misses")

		b.pass(ttl + 50*time.Millisecond)
		b.waitFor(t, "cached value expires", func() bool { return b.client.Exists(ctx, b.raw("product:A-1")).Val() == 0 })
		got, err = Cache(ctx, s, "product:A-1", ttl, l.load)
		assert.NoError(t, err, "Cache after expiry")
		assert.Equal(t, l.v, got, "Cache after expiry")
		assert.EqualValues(t, 2, l.calls.Load(), "loads after expiry: a second load")
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
		assert.EqualValues(t, 1, calls.Load(), "loads by %d concurrent callers", callers)
		for i := range callers {
			require.NoError(t, errs[i], "caller %d", i)
			require.Equal(t, 42, got[i], "caller %d", i)
		}
		v, err := Cache(ctx, s, "hot", time.Minute, load)
		assert.NoError(t, err, "Cache after the shared load")
		assert.Equal(t, 42, v, "Cache after the shared load")
		assert.EqualValues(t, 1, calls.Load(), "loads after the shared load: a hit")
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
			assert.ErrorIs(t, err, errBoom, "Cache with a failing loader")
			assert.Empty(t, v, "Cache with a failing loader")
			assert.EqualValues(t, i, l.calls.Load(), "loads after %d calls: exactly one per call", i)
		}
		assert.Zero(t, b.client.Exists(ctx, b.raw("k")).Val(), "a failed load cached something")
		assert.Zero(t, s.Stats().Errors, "Stats.Errors after loader errors (Redis did not fail)")

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
		assert.EqualValues(t, 1, calls.Load(), "loads for 20 callers of one failing load")
		assert.EqualValues(t, 20, failed.Load(), "callers of one failing load that got its error")
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
			v, err := Cache(ctx, s, c.key, c.ttl, c.load)
			assert.ErrorIs(t, err, c.want, "Cache(%q, %v)", c.key, c.ttl)
			assert.Empty(t, v, "Cache(%q, %v)", c.key, c.ttl)
		})
	}
	assert.Zero(t, l.calls.Load(), "loads for invalid arguments")
	assert.Empty(t, b.mr.Keys(), "keys written for invalid arguments")
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
				require.NoError(t, c.store(b.raw(key)))
				l := &countingLoader[cachedProduct]{v: cachedProduct{SKU: "B-2", Price: 400}}
				v, err := Cache(ctx, s, key, time.Minute, l.load)
				assert.NoError(t, err, "Cache over an undecodable value")
				assert.Equal(t, l.v, v, "Cache over an undecodable value: the loader's value")
				assert.EqualValues(t, 1, l.calls.Load(), "loads for Cache over an undecodable value")
				assert.Equal(t, `{"sku":"B-2","priceCents":400}`, b.client.Get(ctx, b.raw(key)).Val(), "stored value: overwritten with the loaded JSON")
				v, err = Cache(ctx, s, key, time.Minute, l.load)
				assert.NoError(t, err, "second Cache")
				assert.Equal(t, l.v, v, "second Cache")
				assert.EqualValues(t, 1, l.calls.Load(), "loads after the second Cache: a hit")
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
		assert.ErrorIs(t, err, context.Canceled, "the cancelled caller's Cache")
	case <-time.After(5 * time.Second):
		require.FailNow(t, "cancelled caller still waits for the load")
	}
	assert.NoError(t, lctx.Err(), "the shared load's ctx ended when one of two callers left")
	close(release)
	br := <-bRes
	assert.NoError(t, br.err, "the other caller's Cache")
	assert.Equal(t, "v", br.v, "the other caller's Cache")
	stored, _ := b.mr.Get(b.raw("k"))
	assert.Equal(t, `"v"`, stored, "stored value")

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
	v, err := Cache(ctx, s, "k", time.Minute, load)
	require.NoError(t, err)
	assert.Equal(t, "trace-1", v, "the loader sees the caller's ctx values")
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
	assert.Equal(t, 1, gotInt, "Cache[int] beside Cache[string] on one key")
	assert.Equal(t, "one", gotStr, "Cache[string] beside Cache[int] on one key")
}

func TestCacheRedisDown(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	s, err := New(Options{URL: "redis://" + mr.Addr(), Timeout: 300 * time.Millisecond})
	require.NoError(t, err)
	defer s.Close()
	ctx := ctxT(t)
	mr.Close()

	l := &countingLoader[string]{v: "fresh"}
	start := time.Now()
	v, err := Cache(ctx, s, "k", time.Minute, l.load)
	require.Error(t, err, "Cache with Redis down")
	require.Equal(t, "fresh", v, "Cache with Redis down: the loader's value")
	first := time.Since(start)
	start = time.Now()
	for range 100 {
		v, err := Cache(ctx, s, "k", time.Minute, l.load)
		require.ErrorIs(t, err, ErrUnavailable, "Cache with Redis known down")
		require.Equal(t, "fresh", v, "Cache with Redis known down: the loader's value")
	}
	assert.LessOrEqual(t, time.Since(start), time.Second,
		"100 Cache calls with Redis known down (first call %v): no wait for Redis", first)
	assert.EqualValues(t, 101, l.calls.Load(), "loads for 101 calls")

	require.NoError(t, mr.Restart())
	waitFor(t, "IsConnected after Redis came back", s.IsConnected)
	v, err = Cache(ctx, s, "k", time.Minute, l.load)
	assert.NoError(t, err, "Cache after Redis came back")
	assert.Equal(t, "fresh", v, "Cache after Redis came back")
	raw, _ := mr.Get("k")
	assert.Equal(t, `"fresh"`, raw, "stored after recovery")
}

func TestCacheStalledRedis(t *testing.T) {
	t.Parallel()
	s, err := New(Options{URL: "redis://" + stalledServer(t), Timeout: 200 * time.Millisecond, MaxRetries: -1})
	require.NoError(t, err)
	defer s.Close()
	ctx := ctxT(t)
	l := &countingLoader[string]{v: "fresh"}
	start := time.Now()
	v, err := Cache(ctx, s, "k", time.Minute, l.load)
	took := time.Since(start)
	require.True(t, errors.Is(err, context.DeadlineExceeded) || isTimeout(err), "Cache against a stalled Redis = %v; want a timeout", err)
	require.Equal(t, "fresh", v, "Cache against a stalled Redis: the loader's value")
	require.LessOrEqual(t, took, 2*time.Second, "Cache against a stalled Redis: within the bound")
	start = time.Now()
	for range 20 {
		v, err := Cache(ctx, s, "k", time.Minute, l.load)
		require.ErrorIs(t, err, ErrUnavailable, "Cache with Redis known stalled")
		require.Equal(t, "fresh", v, "Cache with Redis known stalled")
	}
	assert.LessOrEqual(t, time.Since(start), 500*time.Millisecond, "20 calls after the stall was seen: no wait for the 200ms timeout")
}

func TestCacheAfterClose(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{})
	ctx := ctxT(t)
	require.NoError(t, s.Close())
	l := &countingLoader[string]{v: "fresh"}
	v, err := Cache(ctx, s, "k", time.Minute, l.load)
	assert.ErrorIs(t, err, ErrClosed, "Cache after Close")
	assert.Equal(t, "fresh", v, "Cache after Close")
	assert.EqualValues(t, 1, l.calls.Load(), "loads for Cache after Close")
	failing := &countingLoader[string]{err: errBoom}
	v, err = Cache(ctx, s, "k", time.Minute, failing.load)
	assert.ErrorIs(t, err, errBoom, "Cache after Close with a failing loader")
	assert.Empty(t, v, "Cache after Close with a failing loader")
	assert.Empty(t, b.mr.Keys(), "keys written by Cache after Close")
}

func TestCacheUnencodableValue(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{})
	ctx := ctxT(t)
	ch := make(chan int)
	l := &countingLoader[chan int]{v: ch}
	v, err := Cache(ctx, s, "k", time.Minute, l.load)
	assert.ErrorIs(t, err, ErrInvalidArgument, "Cache of a value JSON cannot encode")
	assert.Equal(t, ch, v, "Cache of a value JSON cannot encode: the loader's value")
	assert.Empty(t, b.mr.Keys(), "keys stored for a value JSON cannot encode")
}

func TestCacheEndedContext(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	l := &countingLoader[string]{v: "v"}
	v, err := Cache(ctx, s, "k", time.Minute, l.load)
	assert.ErrorIs(t, err, context.Canceled, "Cache with a cancelled ctx")
	assert.Empty(t, v, "Cache with a cancelled ctx")
	assert.Zero(t, l.calls.Load(), "loads for Cache with a cancelled ctx")
	assert.True(t, s.IsConnected(), "IsConnected after the caller's own cancellation")
}

// TestCacheSharedReadBoundedOnStall: callers that share a GET whose
// caller's ctx ended (a request the client gave up on) against a server
// that never answers each return within Options.Timeout of their own
// start, not twice that by reading again with a fresh bound.
func TestCacheSharedReadBoundedOnStall(t *testing.T) {
	t.Parallel()
	const timeout = time.Second
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
	// Reading again with a fresh bound would take up to 2*timeout.
	const slack = timeout / 2
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
			require.FailNow(t, "a caller hangs after its loader called runtime.Goexit")
		}
	}
	v, err := Cache(ctx, s, "k", time.Minute, func(context.Context) (int, error) { return 7, nil })
	require.NoError(t, err)
	assert.Equal(t, 7, v, "Cache after a load that exited")
	assert.Equal(t, []string{b.raw("k")}, b.mr.Keys(), "only the later value stored")
}

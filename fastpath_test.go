package redisservice

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// cscInvalidationBound is how soon a write by another client must be
// visible through a Service with ClientSideCache on a healthy connection
// (the documented few milliseconds, with room for a loaded machine), its
// ClientSideCacheMaxStaleness set far longer.
const cscInvalidationBound = time.Second

// setGetRounds has callers goroutines each Set and then Get a key of its
// own rounds times through s, and reports every call whose result was not
// the one just written.
func setGetRounds(t *testing.T, s *Service, callers, rounds int) {
	t.Helper()
	ctx := ctxT(t)
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for g := range callers {
		wg.Go(func() {
			key := "k" + strconv.Itoa(g)
			for i := range rounds {
				want := fmt.Sprintf("v%d.%d", g, i)
				if ok, err := s.Set(ctx, key, want, WithTTL(time.Minute)); !ok || err != nil {
					errs <- fmt.Errorf("Set(%q) = %v, %v; want true, nil", key, ok, err)
					return
				}
				got, found, err := s.Get(ctx, key)
				if got != want || !found || err != nil {
					errs <- fmt.Errorf("Get(%q) = %q, %v, %v; want %q, true, nil", key, got, found, err, want)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		assert.NoError(t, err)
	}
}

func TestAutoPipelineConcurrentCallers(t *testing.T) {
	t.Parallel()
	urls := map[string]string{"miniredis": "redis://" + miniredis.RunT(t).Addr()}
	if u := os.Getenv(envTestURL); u != "" {
		urls["redis"] = u
	}
	for name, url := range urls {
		t.Run(name, func(t *testing.T) {
			prefix := "rstest:" + randomHex(t, 6) + ":"
			s := dialled(t, url, Options{AutoPipeline: true, KeyPrefix: prefix})
			require.NotNil(t, s.ap, "the Service has no autopipeliner")
			t.Cleanup(func() {
				if name != "miniredis" {
					_ = deleteByPrefix(ctxT(t), s.rdb, prefix)
				}
			})
			setGetRounds(t, s, 64, 20)
			ctx := ctxT(t)
			require.NoError(t, s.HSet(ctx, "h", "f", "x"), "HSet")
			m, err := s.HGetAll(ctx, "h")
			assert.False(t, err != nil || m["f"] != "x", "HGetAll(h) = %v, %v; want map[f:x], nil", m, err)
			require.NoError(t, s.Close(), "Close")
			_, _, err = s.Get(ctx, "k0")
			assert.ErrorIs(t, err, ErrClosed, "Get after Close")
		})
	}
}

func TestClientSideCacheOptions(t *testing.T) {
	t.Parallel()
	addr := miniredis.RunT(t).Addr()
	tests := []struct {
		name string
		url  string
		opts Options
	}{
		{"database 1", "redis://" + addr + "/1", Options{ClientSideCache: true}},
		{"RESP2", "redis://" + addr + "/0?protocol=2", Options{ClientSideCache: true}},
		{"negative entries", "redis://" + addr, Options{ClientSideCache: true, ClientSideCacheEntries: -1}},
		{"negative staleness", "redis://" + addr, Options{ClientSideCacheMaxStaleness: -time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.URL = tt.url
			s, err := New(tt.opts)
			if !errors.Is(err, ErrInvalidArgument) && s != nil {
				_ = s.Close()
			}
			require.ErrorIs(t, err, ErrInvalidArgument, "New(%+v)", tt.opts)
		})
	}
}

// TestClientSideCacheSeesOtherWriters checks on a real Redis that a hot
// key is served from memory and that another client's write to it is
// visible within cscInvalidationBound.
func TestClientSideCacheSeesOtherWriters(t *testing.T) {
	t.Parallel()
	url := os.Getenv(envTestURL)
	if url == "" {
		t.Skipf("no real Redis: set %s (scripts/redis-test-servers start prints it)", envTestURL)
	}
	b := newBackend(t, "redis") // the other writer, and cleanup of b.prefix
	s := dialled(t, url, Options{ClientSideCache: true, KeyPrefix: b.prefix, ClientSideCacheMaxStaleness: time.Minute})
	c, ok := s.rdb.(*redis.Client)
	require.True(t, ok, "client is %T; want *redis.Client", s.rdb)
	ctx := ctxT(t)
	_, err := s.Set(ctx, "hot", "v0")
	require.NoError(t, err, "Set")
	for round := 1; round <= 5; round++ {
		// Warm the cache: the first read fetches, the next ones must hit.
		want := fmt.Sprintf("v%d", round-1)
		before := c.CSCStats().Hits
		for range 3 {
			got, _, err := s.Get(ctx, "hot")
			require.False(t, got != want || err != nil, "round %d: Get(hot) = %q, %v; want %q, nil", round, got, err, want)
		}
		hits := c.CSCStats().Hits - before
		require.False(t, hits < 2, "round %d: %d cache hits in 3 reads of a hot key; want >= 2", round, hits)

		want = fmt.Sprintf("v%d", round)
		require.NoError(t, b.client.Set(ctx, b.raw("hot"), want, 0).Err(), "other client's SET")

		start := time.Now()
		for {
			got, _, err := s.Get(ctx, "hot")
			require.NoError(t, err, "Get(hot)")
			if got == want {
				break
			}
			d := time.Since(start)
			require.False(t, d > cscInvalidationBound, "round %d: Get(hot) = %q %v after another client wrote %q; want it within %v", round, got, d, want, cscInvalidationBound)
			time.Sleep(100 * time.Microsecond)
		}
		t.Logf("round %d: other client's write seen after %v", round, time.Since(start))
	}
}

// holdHook holds every command batch (or lone command) that carries key
// until release is closed, telling held the first time.
type holdHook struct {
	key     string
	held    chan<- struct{}
	release <-chan struct{}
}

func (h holdHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h holdHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.hold([]redis.Cmder{cmd})
		return next(ctx, cmd)
	}
}

func (h holdHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.hold(cmds)
		return next(ctx, cmds)
	}
}

func (h holdHook) hold(cmds []redis.Cmder) {
	for _, c := range cmds {
		if a := c.Args(); len(a) > 1 && a[1] == h.key {
			select {
			case h.held <- struct{}{}:
			default:
			}
			<-h.release
			return
		}
	}
}

// TestQueuedCallReturnsWhenItsContextEnds: a call whose command waits in
// the autopipeliner behind a slow batch returns as soon as its ctx is
// cancelled, with context.Canceled, and the Service works on once the
// slow batch is through. The time from cancel to return is measured over
// several calls: its median must be at most a millisecond (it is a
// goroutine wake-up, some microseconds); its maximum may reach tens of
// milliseconds on a loaded 2-core machine, where a runnable goroutine can
// wait that long for a core, so it is bounded at 100ms.
func TestQueuedCallReturnsWhenItsContextEnds(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		queuedCallReturns(t, b, 1, func(ctx context.Context, s *Service, i int) error {
			_, _, err := s.Get(ctx, "{q}k")
			return err
		})
	})
}

// TestQueuedCacheReadReturnsWhenItsContextEnds is
// TestQueuedCallReturnsWhenItsContextEnds for Cache reads that send GET,
// PTTL and EXISTS of the not-found marker together: the caller returns
// when its ctx is cancelled, though none of the three has been sent, and
// calls no loader.
func TestQueuedCacheReadReturnsWhenItsContextEnds(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		queuedCallReturns(t, b, 3, func(ctx context.Context, s *Service, i int) error {
			_, err := Cache(ctx, s, "{q}c"+strconv.Itoa(i), time.Minute, func(context.Context) (int, error) {
				t.Errorf("Cache({q}c%d) called its loader", i)
				return 0, nil
			}, StaleWhileRevalidate(time.Second), NotFoundTTL(time.Second))
			return err
		})
	})
}

// queuedCallReturns is queuedCallsReturn on a Service over b.
func queuedCallReturns(t *testing.T, b *backend, cmds int, call func(ctx context.Context, s *Service, i int) error) {
	t.Helper()
	queuedCallsReturn(t, b.service(t, Options{AutoPipeline: true, Timeout: time.Minute}), cmds, call)
}

// queuedCallsReturn holds a slow Set's batch on s, made with
// AutoPipeline, queues calls behind it that send cmds commands each,
// cancels each call's ctx and checks how soon it returns, with
// context.Canceled.
func queuedCallsReturn(t *testing.T, s *Service, cmds int, call func(ctx context.Context, s *Service, i int) error) {
	t.Helper()
	ctx := ctxT(t)
	release := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock)
	held := make(chan struct{}, 1)
	// One hash tag: on a cluster, the commands share a slot, so the
	// autopipeliner queues them behind one another too.
	s.rdb.AddHook(holdHook{key: s.key("{q}slow"), held: held, release: release})
	require.NotNil(t, s.ap, "the Service has no autopipeliner")

	slow := make(chan error, 1)
	go func() {
		_, err := s.Set(ctx, "{q}slow", "v")
		slow <- err
	}()
	select {
	case <-held:
	case <-time.After(waitDeadline):
		require.FailNow(t, "the slow command never reached Redis")
	}

	// The flusher takes the commands queued then to wait for the slow
	// batch's turn, once, and no more: every command queued after
	// that stays in the queue. A primer no longer in the queue but
	// still in flight (the slow Set is the one other call in flight)
	// shows that the flusher has taken them.
	pctx, pcancel := context.WithCancel(ctx)
	var primers sync.WaitGroup
	taken := func() bool { return s.ap.Len() > 0 && int(s.inFlight.Load())-1 > s.ap.Len() }
	waitFor(t, "the flusher takes queued Gets", func() bool {
		if taken() {
			time.Sleep(time.Millisecond) // not a primer between its count and its queueing
			return taken()
		}
		primers.Go(func() { _, _, _ = s.Get(pctx, "{q}primer") })
		time.Sleep(time.Millisecond)
		return false
	})
	base := s.ap.Len()

	const tries = 15
	took := make([]time.Duration, 0, tries)
	for i := range tries {
		cctx, cancel := context.WithCancel(ctx)
		returned := make(chan time.Time, 1)
		var err error
		go func() {
			err = call(cctx, s, i)
			returned <- time.Now()
		}()
		waitFor(t, fmt.Sprintf("call %d queued (queue %d, base %d)", i, s.ap.Len(), base), func() bool {
			select {
			case r := <-returned:
				t.Fatalf("call %d returned %v before its cancel: %v", i, r, err)
			default:
			}
			return s.ap.Len() >= base+cmds*(i+1)
		})
		cancelled := time.Now()
		cancel()
		select {
		case r := <-returned:
			took = append(took, r.Sub(cancelled))
		case <-time.After(waitDeadline):
			require.FailNow(t, fmt.Sprintf("call %d still waits %v after its cancel", i, waitDeadline))
		}
		require.ErrorIs(t, err, context.Canceled, "call %d", i)
	}
	slices.Sort(took)
	t.Logf("cancel to return over %d queued calls: median %v, max %v", tries, took[tries/2], took[tries-1])
	assert.LessOrEqual(t, took[tries/2], time.Millisecond, "median time from cancel to return")
	assert.LessOrEqual(t, took[tries-1], 100*time.Millisecond, "longest time from cancel to return")

	pcancel()
	primers.Wait()
	unblock()
	require.NoError(t, <-slow, "the slow Set")
	v, found, err := s.Get(ctx, "{q}slow")
	require.NoError(t, err)
	assert.True(t, found && v == "v", "Get({q}slow) = %q, %v; want v, true", v, found)
}

// TestStalledServerUnder64CallersFailsFast: 64 callers whose commands
// are queued in the autopipeliner (or on the plain client) when the
// server's process stops all return within Timeout and a little, with
// the deadline's error, however long the batch ahead of them waits; the
// calls after that fail fast, and the Service works again once the server
// resumes.
func TestStalledServerUnder64CallersFailsFast(t *testing.T) {
	t.Parallel()
	for name, opts := range map[string]Options{"default": {}, "AutoPipeline": {AutoPipeline: true}} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			srv := startRedisServer(t)
			const timeout = 300 * time.Millisecond
			// Bound to return by: the call's shared deadline (Timeout and one
			// slot) plus room for a loaded 2-core machine to wake 64 goroutines.
			const bound = timeout + 700*time.Millisecond
			opts.Timeout = timeout
			s := dialled(t, srv.url(), opts)
			require.NotNil(t, s.ap, "the Service has no autopipeliner")
			ctx := context.Background()
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			require.NoError(t, s.Connect(cctx))

			const n = 64
			run := func() ([]time.Duration, []error) {
				var wg sync.WaitGroup
				took := make([]time.Duration, n)
				errs := make([]error, n)
				for i := range n {
					wg.Go(func() {
						start := time.Now()
						_, _, errs[i] = s.Get(ctx, "k"+strconv.Itoa(i))
						took[i] = time.Since(start)
					})
				}
				wg.Wait()
				return took, errs
			}
			srv.pause()
			t.Cleanup(srv.resume)
			took, errs := run()
			for i := range n {
				if !errors.Is(errs[i], ErrUnavailable) { // a caller late to start may find the breaker open already
					assert.ErrorIs(t, errs[i], context.DeadlineExceeded, "Get %d on a stalled server", i)
				}
				assert.LessOrEqual(t, took[i], bound, "Get %d on a stalled server", i)
			}
			t.Logf("%d concurrent Gets as the server stalls: slowest %v", n, slices.Max(took))
			require.False(t, s.IsConnected())

			took, errs = run()
			for i := range n {
				assert.ErrorIs(t, errs[i], ErrUnavailable, "Get %d after the first timed out", i)
				assert.Less(t, took[i], 100*time.Millisecond, "Get %d after the first timed out", i)
			}
			t.Logf("%d concurrent Gets after that: slowest %v", n, slices.Max(took))

			srv.resume()
			waitFor(t, "IsConnected after SIGCONT", s.IsConnected)
			require.Eventually(t, func() bool {
				_, err := s.Set(ctx, "k", "v")
				return err == nil
			}, waitDeadline, 10*time.Millisecond, "Set after the server resumed")
		})
	}
}

// TestConcurrentCacheReadsThroughTheAutopipeliner: Cache's reads, the
// local tier's misses included (on a cluster, read from each key's
// master through that node's autopipeliner), return what was stored to
// 32 concurrent callers.
func TestConcurrentCacheReadsThroughTheAutopipeliner(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{AutoPipeline: true, LocalCacheEntries: 8, Timeout: 10 * time.Second})
		ctx := ctxT(t)
		const keys = 40 // more than the tier keeps: most reads miss it
		for k := range keys {
			_, err := s.SetJSON(ctx, "c"+strconv.Itoa(k), k, WithTTL(time.Minute))
			require.NoError(t, err)
		}
		var wg sync.WaitGroup
		var loads atomic.Int64
		errs := make(chan error, 32)
		for g := range 32 {
			wg.Go(func() {
				for i := range 50 {
					k := (g + i) % keys
					v, err := Cache(ctx, s, "c"+strconv.Itoa(k), time.Minute, func(context.Context) (int, error) {
						loads.Add(1)
						return -1, nil
					})
					if err != nil || v != k {
						errs <- fmt.Errorf("Cache(c%d) = %d, %v; want %d, nil", k, v, err, k)
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			assert.NoError(t, err)
		}
		assert.Zero(t, loads.Load(), "loads of stored keys")
	})
}

// TestRateLimitScriptsInABatchRunAtMostOnce: rate-limit scripts that
// share the autopipeliner's batches with ordinary reads, one batch's reply
// held back past the read timeout, are each sent at most once, though
// go-redis retries the ordinary reads.
func TestRateLimitScriptsInABatchRunAtMostOnce(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"miniredis", "redis"} {
		t.Run(name, func(t *testing.T) {
			b := newBackend(t, name)
			p := newStallProxies(t)
			s := newService(t, Options{URL: stallURL(t, b, p), KeyPrefix: b.prefix, Timeout: stallReadTimeout, AutoPipeline: true})
			ctx := ctxT(t)
			warmRateLimitScript(t, s)
			sent := p.scripts.Load()

			p.arm(stallFor)
			callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			const n = 8
			var wg sync.WaitGroup
			for i := range n {
				wg.Go(func() { _, _ = s.CheckRateLimit(callCtx, "batch-"+strconv.Itoa(i), time.Minute, 10) })
				wg.Go(func() { _, _, _ = s.Get(callCtx, "other") })
			}
			wg.Wait()
			scripts := p.scripts.Load() - sent
			assert.Positive(t, scripts, "scripts sent")
			assert.LessOrEqual(t, scripts, int64(n), "scripts sent for %d CheckRateLimit calls", n)
			for i := range n {
				count, err := b.client.Get(ctx, b.raw("ratelimit:batch-"+strconv.Itoa(i))).Int()
				if errors.Is(err, redis.Nil) {
					continue // not sent: the batch ahead of it failed
				}
				require.NoError(t, err)
				assert.LessOrEqual(t, count, 1, "counter of CheckRateLimit %d", i)
			}
		})
	}
}

// getCounter records the most distinct keys that one round trip (a
// pipeline, or a lone command) carried GETs of.
type getCounter struct{ most atomic.Int64 }

func (h *getCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *getCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.count([]redis.Cmder{cmd})
		return next(ctx, cmd)
	}
}

func (h *getCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.count(cmds)
		return next(ctx, cmds)
	}
}

func (h *getCounter) count(cmds []redis.Cmder) {
	keys := map[any]bool{}
	for _, c := range cmds {
		if a := c.Args(); len(a) == 2 && c.Name() == "get" {
			keys[a[1]] = true
		}
	}
	for n := int64(len(keys)); ; {
		m := h.most.Load()
		if n <= m || h.most.CompareAndSwap(m, n) {
			return
		}
	}
}

// TestConcurrentCacheReadsShareRoundTrips: Cache's reads that send GET
// with PTTL and EXISTS of the not-found marker (the local tier's misses,
// StaleWhileRevalidate, NotFoundTTL), made by 32 concurrent callers
// through the autopipeliner, share round trips, and each still gets its
// own key's value, remaining TTL and marker.
func TestConcurrentCacheReadsShareRoundTrips(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		gets := &getCounter{}
		b.client.AddHook(gets)
		if cc, ok := b.client.(*redis.ClusterClient); ok {
			// The tier reads from each key's master through its node
			// client, whose hooks are its own.
			cc.OnNewNode(func(n *redis.Client) { n.AddHook(gets) })
			require.NoError(t, cc.ForEachShard(ctxT(t), func(_ context.Context, n *redis.Client) error {
				n.AddHook(gets)
				return nil
			}))
		}
		s := b.service(t, Options{AutoPipeline: true, LocalCacheEntries: 8, Timeout: 10 * time.Second})
		ctx := ctxT(t)
		// Key k holds k with a TTL of k+1 minutes when k%3 == 0, k with no
		// TTL when k%3 == 1, and is missing with its not-found marker when
		// k%3 == 2.
		const keys = 30
		for k := range keys {
			key := "c" + strconv.Itoa(k)
			var err error
			switch k % 3 {
			case 0:
				_, err = s.SetJSON(ctx, key, k, WithTTL(time.Duration(k+1)*time.Minute))
			case 1:
				_, err = s.SetJSON(ctx, key, k)
			case 2:
				err = b.client.Set(ctx, b.raw(notFoundKey(key)), notFoundMarker, time.Minute).Err()
			}
			require.NoError(t, err)
		}
		var wg sync.WaitGroup
		errs := make(chan error, 32)
		for g := range 32 {
			wg.Go(func() {
				for i := range 30 {
					k := (g + i) % keys
					key := "c" + strconv.Itoa(k)
					v, hit, r, err := cacheRead[int](ctx, s, readKey{key: key, withTTL: true, notFound: true})
					var bad bool
					switch k % 3 {
					case 0:
						ttl := time.Duration(k+1) * time.Minute
						bad = !hit || v != k || r.pttl <= ttl-time.Minute || r.pttl > ttl
					case 1:
						bad = !hit || v != k || r.pttl != -1
					case 2:
						bad = hit || !r.notFound
					}
					if bad || err != nil {
						errs <- fmt.Errorf("cacheRead(%s) = %d, hit %v, PTTL %v, not found %v, %v", key, v, hit, r.pttl, r.notFound, err)
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			assert.NoError(t, err)
		}
		assert.Greater(t, gets.most.Load(), int64(1), "most keys read in one round trip")
	})
}

package flight

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// waitForWaiters polls until a read of key is in flight with n waiters.
func waitForWaiters(t testing.TB, g *ReadGroup[string, []byte], key string, n int) {
	t.Helper()
	require.Eventually(t, func() bool { return g.Waiters(key) == n }, 20*time.Second, time.Millisecond,
		"a read of %q with %d waiters", key, n)
}

// reply returns a read function that answers b.
func reply(b string) func(context.Context, time.Time) ([]byte, error) {
	return func(context.Context, time.Time) ([]byte, error) { return []byte(b), nil }
}

func TestReadGroupSharesOneRead(t *testing.T) {
	t.Parallel()
	var g ReadGroup[string, []byte]
	var calls atomic.Int32
	release := make(chan struct{})
	fn := func(context.Context, time.Time) ([]byte, error) {
		calls.Add(1)
		<-release
		return []byte("v"), nil
	}
	const callers = 20
	var wg sync.WaitGroup
	results := make([]string, callers)
	wg.Go(func() { b, _ := g.Get(context.Background(), "k", time.Minute, fn); results[0] = string(b) })
	waitForWaiters(t, &g, "k", 0)
	for i := 1; i < callers; i++ {
		wg.Go(func() { b, _ := g.Get(context.Background(), "k", time.Minute, fn); results[i] = string(b) })
	}
	waitForWaiters(t, &g, "k", callers-1)
	close(release)
	wg.Wait()
	assert.Equal(t, int32(1), calls.Load(), "%d concurrent reads of one key ran fn", callers)
	for i, r := range results {
		assert.Equal(t, "v", r, "caller %d", i)
	}
	b, err := g.Get(context.Background(), "k", time.Minute, reply("w"))
	require.NoError(t, err)
	assert.Equal(t, "w", string(b), "a read after the shared one reads afresh")
	assert.Equal(t, -1, g.Waiters("k"), "no read left in flight")
}

func TestReadGroupLeaderCancelled(t *testing.T) {
	t.Parallel()
	var g ReadGroup[string, []byte]
	leaderCtx, cancel := context.WithCancel(context.Background())
	leaderErr := make(chan error, 1)
	go func() {
		_, err := g.Get(leaderCtx, "k", time.Minute, func(ctx context.Context, until time.Time) ([]byte, error) {
			assert.True(t, until.IsZero(), "the first reader's fn is bound by its ctx alone")
			<-ctx.Done()
			return nil, ctx.Err()
		})
		leaderErr <- err
	}()
	waitForWaiters(t, &g, "k", 0)
	const timeout = 2 * time.Second
	type result struct {
		b     string
		err   error
		until time.Time
		start time.Time
	}
	follower := make(chan result, 1)
	go func() {
		var until time.Time
		start := time.Now()
		b, err := g.Get(context.Background(), "k", timeout, func(_ context.Context, u time.Time) ([]byte, error) {
			until = u
			return []byte("own"), nil
		})
		follower <- result{string(b), err, until, start}
	}()
	waitForWaiters(t, &g, "k", 1)
	cancelled := time.Now()
	cancel()
	require.ErrorIs(t, <-leaderErr, context.Canceled)
	r := <-follower
	require.NoError(t, r.err)
	assert.Equal(t, "own", r.b, "the follower of a cancelled read reads for itself")
	// Its own deadline was set while it waited, before the cancel; a fresh
	// one would come after.
	assert.WithinRange(t, r.until, r.start.Add(timeout), cancelled.Add(timeout),
		"the follower's own read is bound by its own deadline, not a fresh one")
}

func TestReadGroupWaiterBound(t *testing.T) {
	t.Parallel()
	var g ReadGroup[string, []byte]
	release := make(chan struct{})
	var wg sync.WaitGroup
	// The reader may take a minute; a waiter with a 100ms bound does not
	// wait for it.
	wg.Go(func() {
		_, _ = g.Get(context.Background(), "k", time.Minute, func(context.Context, time.Time) ([]byte, error) {
			<-release
			return []byte("late"), nil
		})
	})
	waitForWaiters(t, &g, "k", 0)
	start := time.Now()
	_, err := g.Get(context.Background(), "k", 100*time.Millisecond, reply("unused"))
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, time.Since(start), time.Second, "a waiter's wait past its own bound")

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = g.Get(ctx, "k", time.Minute, reply("unused"))
	assert.ErrorIs(t, err, context.DeadlineExceeded, "a waiter whose ctx ends")
	close(release)
	wg.Wait()
}

func TestReadGroupReaderGoexit(t *testing.T) {
	t.Parallel()
	var g ReadGroup[string, []byte]
	release := make(chan struct{})
	go func() {
		_, _ = g.Get(context.Background(), "k", time.Minute, func(context.Context, time.Time) ([]byte, error) {
			<-release
			runtime.Goexit()
			return nil, nil
		})
	}()
	waitForWaiters(t, &g, "k", 0)
	got := make(chan string, 1)
	go func() {
		b, err := g.Get(context.Background(), "k", time.Minute, reply("own"))
		assert.NoError(t, err)
		got <- string(b)
	}()
	waitForWaiters(t, &g, "k", 1)
	close(release)
	select {
	case b := <-got:
		assert.Equal(t, "own", b, "a waiter whose reader exited reads for itself")
	case <-time.After(5 * time.Second):
		require.FailNow(t, "a waiter hangs after its reader called runtime.Goexit")
	}
}

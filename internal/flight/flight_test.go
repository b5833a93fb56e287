package flight

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var errBoom = errors.New("boom")

// waitWaiters polls until a load of key is in flight with n callers
// waiting for it.
func waitWaiters(t testing.TB, g *Group[string], key string, n int) {
	t.Helper()
	require.Eventually(t, func() bool { return g.Waiters(key) == n }, 10*time.Second, time.Millisecond,
		"a load of %q with %d waiters", key, n)
}

func TestGroupDo(t *testing.T) {
	t.Parallel()
	var g Group[string]
	var calls atomic.Int32
	release := make(chan struct{})
	fn := func(context.Context) (any, error) {
		calls.Add(1)
		<-release
		return "v", nil
	}
	const callers = 20
	var wg sync.WaitGroup
	results := make([]any, callers)
	for i := range callers {
		wg.Go(func() {
			v, err := g.Do(context.Background(), "k", time.Minute, fn)
			assert.NoError(t, err)
			results[i] = v
		})
	}
	waitWaiters(t, &g, "k", callers)
	close(release)
	wg.Wait()
	assert.EqualValues(t, 1, calls.Load(), "%d concurrent Do of one key ran fn", callers)
	for i, v := range results {
		assert.Equal(t, "v", v, "caller %d", i)
	}
	assert.Equal(t, -1, g.Waiters("k"), "no load left in flight")
	v, err := g.Do(context.Background(), "k", time.Minute, func(context.Context) (any, error) { return "w", nil })
	require.NoError(t, err)
	assert.Equal(t, "w", v, "a Do after the shared one loads afresh")
}

func TestGroupPanicAndGoexit(t *testing.T) {
	t.Parallel()
	var g Group[string]
	_, err := g.Do(context.Background(), "k", time.Minute, func(context.Context) (any, error) { panic(errBoom) })
	var pe *PanicError
	require.ErrorAs(t, err, &pe)
	assert.Equal(t, errBoom, pe.Value)
	assert.ErrorIs(t, err, errBoom, "a panic with an error unwraps to it")
	assert.Contains(t, err.Error(), "flight_test.go", "the stack of the panic")

	_, err = g.Do(context.Background(), "k", time.Minute, func(context.Context) (any, error) {
		runtime.Goexit()
		return 1, nil
	})
	assert.ErrorIs(t, err, ErrGoexit)
	v, err := g.Do(context.Background(), "k", time.Minute, func(context.Context) (any, error) { return 7, nil })
	require.NoError(t, err)
	assert.Equal(t, 7, v, "a load after a panic and a Goexit")
}

func TestNewPanicError(t *testing.T) {
	t.Parallel()
	var p *PanicError
	func() {
		defer func() { p = NewPanicError(recover()) }()
		panic("kaboom")
	}()
	assert.Equal(t, "kaboom", p.Value)
	assert.Contains(t, string(p.Stack), "flight_test.go")
	assert.NoError(t, p.Unwrap(), "a panic with a string unwraps to nothing")
	assert.Same(t, p, NewPanicError(p), "a *PanicError recovered again")
}

type ctxKey struct{}

// TestGroupOutlivesCallers: the load has its caller's values, not its
// cancellation; it goes on when its callers leave, and a caller that
// comes later joins it.
func TestGroupOutlivesCallers(t *testing.T) {
	t.Parallel()
	var g Group[string]
	var calls atomic.Int32
	release := make(chan struct{})
	ctx, cancel := context.WithCancel(context.WithValue(context.Background(), ctxKey{}, "value"))
	aErr := make(chan error, 1)
	go func() {
		_, err := g.Do(ctx, "k", time.Minute, func(lctx context.Context) (any, error) {
			calls.Add(1)
			assert.Equal(t, "value", lctx.Value(ctxKey{}), "the load's ctx has its caller's values")
			select {
			case <-release:
				return 1, nil
			case <-lctx.Done():
				return nil, lctx.Err()
			}
		})
		aErr <- err
	}()
	waitWaiters(t, &g, "k", 1)
	cancel()
	require.ErrorIs(t, <-aErr, context.Canceled)
	assert.Equal(t, 0, g.Waiters("k"), "the load goes on after its caller left")

	bVal := make(chan any, 1)
	go func() {
		v, err := g.Do(context.Background(), "k", time.Minute, func(context.Context) (any, error) {
			calls.Add(1)
			return 2, nil
		})
		assert.NoError(t, err)
		bVal <- v
	}()
	waitWaiters(t, &g, "k", 1)
	close(release)
	assert.Equal(t, 1, <-bVal, "a caller after every other left joins the load")
	assert.EqualValues(t, 1, calls.Load())
}

// TestGroupBounds: a load ends after its timeout; a caller without a
// deadline stops waiting that long after the load's deadline even when
// the load ignores its ctx; a caller whose ctx ends stops waiting then.
func TestGroupBounds(t *testing.T) {
	t.Parallel()
	var g Group[string]
	_, err := g.Do(context.Background(), "k", 10*time.Millisecond, func(ctx context.Context) (any, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	assert.ErrorIs(t, err, context.DeadlineExceeded, "a load past its timeout")

	release := make(chan struct{})
	defer close(release)
	start := time.Now()
	_, err = g.Do(context.Background(), "stuck", 10*time.Millisecond, func(context.Context) (any, error) {
		<-release
		return nil, nil
	})
	assert.ErrorIs(t, err, context.DeadlineExceeded, "a caller of a load that ignores its ctx")
	assert.Less(t, time.Since(start), 5*time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	_, err = new(Group[string]).Do(ctx, "k", time.Minute, func(context.Context) (any, error) {
		<-release
		return nil, nil
	})
	assert.ErrorIs(t, err, context.DeadlineExceeded, "a caller whose own ctx ends")
}

// TestGroupReentrant: a load's own ctx, or one derived from it, cannot
// start its key again; another key, or the same key in another Group,
// loads.
func TestGroupReentrant(t *testing.T) {
	t.Parallel()
	var g Group[string]
	_, err := g.Do(context.Background(), "k", time.Minute, func(ctx context.Context) (any, error) {
		return g.Do(ctx, "k", time.Minute, func(context.Context) (any, error) { return 1, nil })
	})
	assert.True(t, err == ErrReentrant, "Do of its own key from inside a load = %v", err) //nolint:errorlint // Do's own, unwrapped
	_, err = g.Do(context.Background(), "k", time.Minute, func(ctx context.Context) (any, error) {
		dctx, cancel := context.WithCancel(ctx)
		defer cancel()
		return nil, g.Start(dctx, "k", time.Minute, func(context.Context) (any, error) { return 1, nil })
	})
	assert.True(t, err == ErrReentrant, "Start of its own key with a ctx derived from the load's = %v", err) //nolint:errorlint // Start's own, unwrapped

	v, err := g.Do(context.Background(), "k", time.Minute, func(ctx context.Context) (any, error) {
		return g.Do(ctx, "other", time.Minute, func(context.Context) (any, error) { return "other", nil })
	})
	require.NoError(t, err, "a load of another key from inside a load")
	assert.Equal(t, "other", v)
	v, err = g.Do(context.Background(), "k", time.Minute, func(ctx context.Context) (any, error) {
		return new(Group[string]).Do(ctx, "k", time.Minute, func(context.Context) (any, error) { return "another group", nil })
	})
	require.NoError(t, err, "a load of the same key in another Group")
	assert.Equal(t, "another group", v)
}

func TestGroupClose(t *testing.T) {
	t.Parallel()
	var g Group[string]
	entered := make(chan struct{})
	var returned atomic.Bool
	errc := make(chan error, 1)
	go func() {
		_, err := g.Do(context.Background(), "k", time.Minute, func(ctx context.Context) (any, error) {
			close(entered)
			<-ctx.Done()
			returned.Store(true)
			return nil, ctx.Err()
		})
		errc <- err
	}()
	<-entered
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	require.NoError(t, g.Close(ctx), "Close waits for the cancelled load")
	assert.True(t, returned.Load())
	assert.ErrorIs(t, <-errc, context.Canceled, "the caller of a load that Close cancelled")
	_, err := g.Do(context.Background(), "k", time.Minute, func(context.Context) (any, error) { return 1, nil })
	assert.True(t, err == ErrClosed, "Do after Close = %v", err) //nolint:errorlint // Do's own, unwrapped
	err = g.Start(context.Background(), "k", time.Minute, func(context.Context) (any, error) { return 1, nil })
	assert.True(t, err == ErrClosed, "Start after Close = %v", err) //nolint:errorlint // Start's own, unwrapped
	require.NoError(t, g.Close(ctx), "a second Close")

	// A load that ignores its ctx holds Close until Close's ctx ends only.
	var g2 Group[string]
	release := make(chan struct{})
	defer close(release)
	require.NoError(t, g2.Start(context.Background(), "k", time.Minute, func(context.Context) (any, error) {
		<-release
		return nil, nil
	}))
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel2()
	assert.ErrorIs(t, g2.Close(ctx2), context.DeadlineExceeded, "Close of a load that ignores its ctx")
}

// TestGroupOnForget: the hook runs once the load is forgotten and before
// its callers wake, so that a Do from it starts a new load.
func TestGroupOnForget(t *testing.T) {
	t.Parallel()
	var g Group[string]
	var first atomic.Bool // the hook runs again for the load it starts
	var c *call           // the first load, taken while it runs
	type atForget struct {
		waiters int
		woken   bool
		v       any
		err     error
	}
	seen := make(chan atForget, 1)
	g.OnForget(func(key string) {
		if !first.CompareAndSwap(false, true) {
			return
		}
		var a atForget
		a.waiters = g.Waiters(key)
		select {
		case <-c.done:
			a.woken = true
		default:
		}
		a.v, a.err = g.Do(context.Background(), key, time.Minute, func(context.Context) (any, error) { return 2, nil })
		seen <- a
	})
	v, err := g.Do(context.Background(), "k", time.Minute, func(context.Context) (any, error) {
		g.mu.Lock()
		c = g.calls["k"]
		g.mu.Unlock()
		return 1, nil
	})
	require.NoError(t, err)
	assert.Equal(t, 1, v)
	a := <-seen
	assert.Equal(t, -1, a.waiters, "the load is forgotten when the hook runs")
	assert.False(t, a.woken, "the callers woke before the hook ran")
	require.NoError(t, a.err)
	assert.Equal(t, 2, a.v, "a Do from the hook starts a new load")
}

package redisservice

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The tests of this file cover one load: who runs it, who waits for it,
// what bounds it, and what a panicking or re-entrant loader does.

// TestCacheLoaderPanicIsAnError: a loader's panic reaches every caller
// waiting for it as an error (with the panic value and the loader's
// stack), never as a panic, and is logged, also when no caller is left to
// receive it.
func TestCacheLoaderPanicIsAnError(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		logs := new(syncBuffer)
		s := b.service(t, Options{Logger: jsonLogger(logs)})
		ctx := ctxT(t)
		release := make(chan struct{})
		load := func(context.Context) (int, error) {
			<-release
			panic("kaboom")
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
		waitWaiting(t, s, keyOf[int]("k"), callers)
		close(release)
		for range callers {
			err := <-errs
			var pe *panicError
			require.ErrorAs(t, err, &pe, "Cache whose loader panicked")
			assert.Equal(t, "kaboom", pe.Value)
			assert.True(t, strings.HasPrefix(err.Error(), `redisservice: cache "k": load: panic: kaboom`), "error text %q", err)
			assert.Contains(t, err.Error(), "cacheload_test.go", "the loader's stack is in the error")
		}
		waitLog(t, logs, "kaboom")

		// Every caller has gone when the loader panics: still logged.
		logs2 := new(syncBuffer)
		s2 := b.service(t, Options{Logger: jsonLogger(logs2)})
		entered := make(chan struct{})
		release2 := make(chan struct{})
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			_, err := Cache(cctx, s2, "k2", time.Minute, func(context.Context) (int, error) {
				close(entered)
				<-release2
				panic("nobody waits")
			})
			done <- err
		}()
		<-entered
		cancel()
		require.ErrorIs(t, <-done, context.Canceled)
		close(release2)
		waitLog(t, logs2, "nobody waits")
		v, err := Cache(ctx, s2, "k2", time.Minute, func(context.Context) (int, error) { return 7, nil })
		require.NoError(t, err, "Cache after a load that panicked")
		assert.Equal(t, 7, v)
	})
}

// waitLog waits until a line holding want has been logged.
func waitLog(t testing.TB, logs *syncBuffer, want string) {
	t.Helper()
	require.Eventually(t, func() bool {
		logs.mu.Lock()
		defer logs.mu.Unlock()
		return strings.Contains(logs.buf.String(), want)
	}, 10*time.Second, time.Millisecond, "a log line with %q", want)
}

// TestCacheLoaderPanicReleasesFleetLock: the fleet lock that a panicking
// load took is gone when its callers get the error, so the next miss
// loads at once instead of waiting for the lock to expire.
func TestCacheLoaderPanicReleasesFleetLock(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{Logger: quietLogger()})
		ctx := ctxT(t)
		var err error
		p := catchPanic(func() {
			_, err = Cache(ctx, s, "k", time.Minute, func(context.Context) (string, error) { panic("kaboom") })
		})
		assert.Nil(t, p, "Cache re-raised its loader's panic")
		var pe *panicError
		assert.ErrorAs(t, err, &pe)
		assert.EqualValues(t, 0, b.client.Exists(ctx, b.raw(lockKey("k"))).Val(), "the panicking load's fleet lock is left behind")

		start := time.Now()
		v, err := Cache(ctx, s, "k", time.Minute, func(context.Context) (string, error) { return "v", nil })
		require.NoError(t, err)
		assert.Equal(t, "v", v)
		assert.Less(t, time.Since(start), fleetLockTTL/2, "the next miss waited for the fleet lock")
	})
}

// catchPanic returns what fn panicked with, or nil.
func catchPanic(fn func()) (r any) {
	defer func() { r = recover() }()
	fn()
	return nil
}

// quietLogger drops every line: for tests whose failures are expected.
func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// TestCacheLoaderCallsCacheOnItsOwnKey: a loader that calls Cache for the
// key (and T) it is loading gets an error at once instead of waiting for
// itself, and the key is not left stuck.
func TestCacheLoaderCallsCacheOnItsOwnKey(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		var inner error
		load := func(lctx context.Context) (string, error) {
			_, inner = Cache(lctx, s, "k", time.Minute, func(context.Context) (string, error) { return "inner", nil })
			return "outer", nil
		}
		type result struct {
			v   string
			err error
		}
		res := make(chan result, 1)
		go func() {
			v, err := Cache(ctx, s, "k", time.Minute, load)
			res <- result{v, err}
		}()
		select {
		case r := <-res:
			require.NoError(t, r.err)
			assert.Equal(t, "outer", r.v)
		case <-time.After(10 * time.Second):
			require.FailNow(t, "a loader that calls Cache on its own key waits for itself")
		}
		assert.ErrorIs(t, inner, ErrInvalidArgument, "the loader's own call of Cache on its key")
		v, err := Cache(ctx, s, "k", time.Minute, func(context.Context) (string, error) { return "later", nil })
		require.NoError(t, err)
		assert.Equal(t, "outer", v, "the key after the re-entrant load")

		// Another T, or another key, is a load of its own.
		v, err = Cache(ctx, s, "k2", time.Minute, func(lctx context.Context) (string, error) {
			n, err := Cache(lctx, s, "k2:n", time.Minute, func(context.Context) (int, error) { return 2, nil })
			return fmt.Sprint(n), err
		})
		require.NoError(t, err)
		assert.Equal(t, "2", v)
	})
}

// TestCacheHashAtKey: a key holding a hash is a miss that loads and
// overwrites it at once, not after waiting for its own fleet lock.
func TestCacheHashAtKey(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		require.NoError(t, b.client.HSet(ctx, b.raw("h"), "f", "v").Err())
		start := time.Now()
		v, err := Cache(ctx, s, "h", time.Minute, func(context.Context) (string, error) { return "x", nil })
		require.NoError(t, err)
		assert.Equal(t, "x", v)
		assert.Less(t, time.Since(start), fleetLockTTL/2, "a miss over a hash waited for its own fleet lock")
		assert.Equal(t, `"x"`, b.client.Get(ctx, b.raw("h")).Val(), "the hash is overwritten")
		assert.EqualValues(t, 0, b.client.Exists(ctx, b.raw(lockKey("h"))).Val(), "the lock is released")
		assert.Zero(t, s.Stats().Errors, "a value of another type is a miss, not a failure")
	})
}

// TestCacheStampede: 500 callers of a cold key, 100 of them with
// deadlines of 1–50 ms that end while the load runs, enter the loader
// exactly once; those whose deadline ended get it, the others the value.
func TestCacheStampede(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		// Timeout bounds the load: room for the whole stampede on a
		// loaded machine.
		s := b.service(t, Options{Timeout: time.Minute})
		ctx := ctxT(t)
		const short, long = 100, 400
		var loads atomic.Int32
		entered := make(chan struct{}, 1)
		release := make(chan struct{})
		load := func(lctx context.Context) (string, error) {
			loads.Add(1)
			entered <- struct{}{}
			select {
			case <-release:
				return "v", nil
			case <-lctx.Done():
				return "", lctx.Err()
			}
		}
		var wg sync.WaitGroup
		shortErrs := make([]error, short)
		for i := range short {
			wg.Go(func() {
				d := time.Duration(1+rand.IntN(50)) * time.Millisecond
				c, cancel := context.WithTimeout(ctx, d)
				defer cancel()
				_, shortErrs[i] = Cache(c, s, "cold", time.Minute, load)
			})
		}
		wg.Wait() // every short deadline has ended; the load they started runs on
		for i, err := range shortErrs {
			require.ErrorIs(t, err, context.DeadlineExceeded, "short caller %d", i)
		}
		vals := make([]string, long)
		errs := make([]error, long)
		for i := range long {
			wg.Go(func() { vals[i], errs[i] = Cache(ctx, s, "cold", time.Minute, load) })
		}
		waitWaiting(t, s, keyOf[string]("cold"), long)
		close(release)
		wg.Wait()
		assert.EqualValues(t, 1, loads.Load(), "loader entries for one burst of %d callers", short+long)
		for i := range long {
			require.NoError(t, errs[i], "caller %d", i)
			require.Equal(t, "v", vals[i], "caller %d", i)
		}
	})
}

// TestCloseCancelsLoads: Close cancels the context of each load in
// progress, the normal and the background ones, and waits for them to
// return; a loader that ignores its context holds Close for Timeout at
// most.
func TestCloseCancelsLoads(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		const timeout = 500 * time.Millisecond
		s := b.service(t, Options{Timeout: timeout})
		ctx := ctxT(t)
		var returned atomic.Int32
		entered := make(chan struct{}, 2)
		blocked := func(lctx context.Context) (string, error) {
			defer returned.Add(1)
			entered <- struct{}{}
			<-lctx.Done()
			return "", lctx.Err()
		}
		// A stale value, so that a call starts a background refresh.
		_, err := Cache(ctx, s, "swr", time.Minute, func(context.Context) (string, error) { return "old", nil }, StaleWhileRevalidate(time.Hour))
		require.NoError(t, err)
		require.NoError(t, b.client.PExpire(ctx, b.raw("swr"), time.Minute).Err())
		v, err := Cache(ctx, s, "swr", time.Minute, blocked, StaleWhileRevalidate(time.Hour))
		require.NoError(t, err)
		require.Equal(t, "old", v)
		<-entered

		waitErr := make(chan error, 1)
		go func() { _, err := Cache(context.Background(), s, "k", time.Minute, blocked); waitErr <- err }()
		<-entered
		require.NoError(t, s.Close())
		assert.EqualValues(t, 2, returned.Load(), "loads still running when Close returned")
		select {
		case err := <-waitErr:
			assert.ErrorIs(t, err, context.Canceled, "the caller of a load that Close cancelled")
		case <-time.After(10 * time.Second):
			require.FailNow(t, "the caller of a load still waits after Close")
		}

		// A loader that ignores its context: Close waits Timeout for it.
		s2 := b.service(t, Options{Timeout: timeout})
		release := make(chan struct{})
		defer close(release)
		go func() {
			_, _ = Cache(ctx, s2, "stuck", time.Minute, func(context.Context) (string, error) {
				entered <- struct{}{}
				<-release
				return "", nil
			})
		}()
		<-entered
		start := time.Now()
		require.NoError(t, s2.Close())
		assert.Less(t, time.Since(start), 10*timeout, "Close waits for a loader that ignores its context")
	})
}

// TestCacheErrorText: the package name appears once in a loader's error.
func TestCacheErrorText(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{})
	_, err := Cache(ctxT(t), s, "k", time.Minute, func(context.Context) (string, error) { return "", ErrNotFound })
	require.ErrorIs(t, err, ErrNotFound)
	assert.Equal(t, `redisservice: cache "k": load: not found`, err.Error())
	_, err = Cache(ctxT(t), s, "k", time.Minute, func(context.Context) (string, error) { return "", errors.New("db down") })
	assert.Equal(t, `redisservice: cache "k": load: db down`, err.Error())
}

// TestCacheErrLoad: every failure of the loader matches ErrLoad and the
// loader's own error; an error that is not the loader's does not, and
// comes with a usable value or is the caller's own ctx.
func TestCacheErrLoad(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{Logger: slog.New(slog.DiscardHandler)})
		ctx := ctxT(t)
		dbDown := errors.New("db down")

		_, err := Cache(ctx, s, "failed", time.Minute, func(context.Context) (int, error) { return 0, dbDown })
		require.ErrorIs(t, err, ErrLoad, "a loader's error")
		require.ErrorIs(t, err, dbDown)

		_, err = Cache(ctx, s, "panicked", time.Minute, func(context.Context) (int, error) { panic("kaboom") })
		require.ErrorIs(t, err, ErrLoad, "a loader's panic")

		_, err = Cache(ctx, s, "absent", time.Minute, func(context.Context) (int, error) { return 0, ErrNotFound }, NotFoundTTL(time.Minute))
		require.ErrorIs(t, err, ErrLoad, "a loader's ErrNotFound")
		require.ErrorIs(t, err, ErrNotFound)
		_, err = Cache(ctx, s, "absent", time.Minute, func(context.Context) (int, error) { return 7, nil }, NotFoundTTL(time.Minute))
		require.ErrorIs(t, err, ErrNotFound, "a remembered absence")
		assert.NotErrorIs(t, err, ErrLoad, "a remembered absence: the loader did not run")

		// The caller's own ctx ends while the load runs: its error, not the loader's.
		release := make(chan struct{})
		defer close(release)
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			_, err := Cache(cctx, s, "slow", time.Minute, func(context.Context) (int, error) { <-release; return 1, nil })
			done <- err
		}()
		waitWaiting(t, s, keyOf[int]("slow"), 1)
		cancel()
		err = <-done
		require.ErrorIs(t, err, context.Canceled)
		assert.NotErrorIs(t, err, ErrLoad, "the caller's own ctx")

		// A reserved key: the loader's value comes with ErrInvalidKey, not ErrLoad.
		v, err := Cache(ctx, s, "session:x", time.Minute, func(context.Context) (int, error) { return 9, nil })
		require.ErrorIs(t, err, ErrInvalidKey)
		assert.NotErrorIs(t, err, ErrLoad)
		assert.Equal(t, 9, v, "the loader's value is usable")
	})
}

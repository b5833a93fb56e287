package redisservice

import (
	"context"
	"errors"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// do is start and wait, as Cache uses them.
func (g *flightGroup) do(ctx context.Context, k flightKey, timeout time.Duration, fn func(context.Context) (any, error)) (any, error) {
	f, err := g.start(ctx, k, timeout, fn)
	if err != nil {
		return nil, err
	}
	return g.wait(ctx, f, timeout)
}

func TestFlightGroupPanicAndGoexit(t *testing.T) {
	t.Parallel()
	var g flightGroup
	k := keyOf[int]("k")
	_, err := g.do(context.Background(), k, time.Minute, func(context.Context) (any, error) { panic(errBoom) })
	var pe *panicError
	require.ErrorAs(t, err, &pe)
	assert.ErrorIs(t, err, errBoom, "a panic with an error unwraps to it")
	assert.Contains(t, err.Error(), "flight_test.go", "the stack of the panic")

	_, err = g.do(context.Background(), k, time.Minute, func(context.Context) (any, error) {
		runtime.Goexit()
		return 1, nil
	})
	assert.ErrorIs(t, err, errGoexit)
	v, err := g.do(context.Background(), k, time.Minute, func(context.Context) (any, error) { return 7, nil })
	require.NoError(t, err)
	assert.Equal(t, 7, v, "a load after a panic and a Goexit")
}

// TestFlightGroupOutlivesCallers: the load goes on when its callers
// leave; a caller that comes later joins it.
func TestFlightGroupOutlivesCallers(t *testing.T) {
	t.Parallel()
	var g flightGroup
	k := keyOf[int]("k")
	var calls atomic.Int32
	release := make(chan struct{})
	fn := func(ctx context.Context) (any, error) {
		calls.Add(1)
		select {
		case <-release:
			return 1, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	f, err := g.start(ctx, k, time.Minute, fn)
	require.NoError(t, err)
	cancel()
	_, err = g.wait(ctx, f, time.Minute)
	require.ErrorIs(t, err, context.Canceled)
	f2, err := g.start(context.Background(), k, time.Minute, fn)
	require.NoError(t, err)
	assert.Same(t, f, f2, "a caller after every other left joins the load")
	close(release)
	v, err := g.wait(context.Background(), f2, time.Minute)
	require.NoError(t, err)
	assert.Equal(t, 1, v)
	assert.EqualValues(t, 1, calls.Load())
}

// TestFlightGroupBounds: a load ends after its timeout; a caller without a
// deadline stops waiting grace after that even when the load ignores its
// ctx; a load's own ctx cannot start k again.
func TestFlightGroupBounds(t *testing.T) {
	t.Parallel()
	var g flightGroup
	k := keyOf[int]("k")
	_, err := g.do(context.Background(), k, 10*time.Millisecond, func(ctx context.Context) (any, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	assert.ErrorIs(t, err, context.DeadlineExceeded, "a load past its timeout")

	release := make(chan struct{})
	defer close(release)
	start := time.Now()
	_, err = g.do(context.Background(), keyOf[int]("stuck"), 10*time.Millisecond, func(context.Context) (any, error) {
		<-release
		return nil, nil
	})
	assert.ErrorIs(t, err, context.DeadlineExceeded, "a caller of a load that ignores its ctx")
	assert.Less(t, time.Since(start), 5*time.Second)

	_, err = g.do(context.Background(), k, time.Minute, func(ctx context.Context) (any, error) {
		return g.do(ctx, k, time.Minute, func(context.Context) (any, error) { return 1, nil })
	})
	assert.ErrorIs(t, err, errReentrant)
	v, err := g.do(context.Background(), k, time.Minute, func(ctx context.Context) (any, error) {
		return g.do(ctx, keyOf[string]("k"), time.Minute, func(context.Context) (any, error) { return "other", nil })
	})
	require.NoError(t, err, "a load of another key or type from inside a load")
	assert.Equal(t, "other", v)
}

func TestFlightGroupClose(t *testing.T) {
	t.Parallel()
	var g flightGroup
	entered := make(chan struct{})
	var returned atomic.Bool
	f, err := g.start(context.Background(), keyOf[int]("k"), time.Minute, func(ctx context.Context) (any, error) {
		close(entered)
		<-ctx.Done()
		returned.Store(true)
		return nil, ctx.Err()
	})
	require.NoError(t, err)
	<-entered
	assert.True(t, g.close(time.Minute), "close waits for the cancelled load")
	assert.True(t, returned.Load())
	_, err = g.wait(context.Background(), f, time.Minute)
	assert.ErrorIs(t, err, context.Canceled)
	_, err = g.start(context.Background(), keyOf[int]("k"), time.Minute, func(context.Context) (any, error) { return 1, nil })
	assert.True(t, errors.Is(err, errFlightsClosed), "start after close = %v", err)

	// A load that ignores its ctx holds close for its timeout only.
	var g2 flightGroup
	release := make(chan struct{})
	defer close(release)
	_, err = g2.start(context.Background(), keyOf[int]("k"), time.Minute, func(context.Context) (any, error) {
		<-release
		return nil, nil
	})
	require.NoError(t, err)
	assert.False(t, g2.close(10*time.Millisecond), "close of a load that ignores its ctx")
}

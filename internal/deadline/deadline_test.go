package deadline

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type ctxKey struct{}

func TestSharedDeadlineWithinBound(t *testing.T) {
	t.Parallel()
	const timeout = 120 * time.Millisecond
	d := New(timeout)
	require.True(t, d.width > 0 && d.width <= maxSlotWidth && d.width <= timeout/64,
		"slot width = %v; want in (0, min(%v, timeout/64)]", d.width, maxSlotWidth)
	valued := context.WithValue(context.Background(), ctxKey{}, "v")
	tests := []struct {
		name string
		ctx  context.Context
	}{
		{"background", context.Background()},
		{"todo", context.TODO()},
		{"values", valued},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var wg sync.WaitGroup
			for g := range 8 {
				wg.Go(func() {
					for i := range 50 {
						start := time.Now()
						ctx, cancel := d.Bound(tt.ctx)
						cancel()
						end := time.Now()
						dl, ok := ctx.Deadline()
						if !assert.True(t, ok, "Bound(%s).Deadline() = _, false; want a deadline", tt.name) {
							return
						}
						// The deadline is at least timeout after the call and at
						// most one slot width (plus scheduling slack) later.
						if !assert.True(t, !dl.Before(start.Add(timeout)) && !dl.After(end.Add(timeout+d.width+time.Millisecond)),
							"goroutine %d call %d: deadline %v after the call; want in [%v, %v]",
							g, i, dl.Sub(start), timeout, timeout+d.width) {
							return
						}
						if tt.ctx == valued && !assert.Equal(t, "v", ctx.Value(ctxKey{}), "Bound(values).Value") {
							return
						}
						time.Sleep(time.Duration(i%3) * time.Millisecond)
					}
				})
			}
			wg.Wait()

			start := time.Now()
			ctx, cancel := d.Bound(tt.ctx)
			defer cancel()
			select {
			case <-ctx.Done():
				assert.GreaterOrEqual(t, time.Since(start), timeout, "shared deadline ended too early")
				assert.ErrorIs(t, ctx.Err(), context.DeadlineExceeded)
			case <-time.After(timeout + d.width + time.Second):
				assert.Fail(t, "shared deadline still open", "%v after the call", timeout+d.width+time.Second)
			}
		})
	}
}

func TestBoundEveryKindOfContext(t *testing.T) {
	t.Parallel()
	const timeout = 2 * time.Second
	d := New(timeout)
	cancelled, cancel := context.WithCancel(context.Background())
	defer cancel()
	withDeadline, cancel2 := context.WithTimeout(context.Background(), time.Hour)
	defer cancel2()
	tests := []struct {
		name   string
		ctx    context.Context
		shared bool // the shared deadline, no timer of its own
		want   time.Duration
	}{
		{"nil", nil, true, timeout},
		{"background", context.Background(), true, timeout},
		{"values", context.WithValue(context.Background(), ctxKey{}, 1), true, timeout},
		{"cancellable", cancelled, false, timeout},
		{"caller deadline", withDeadline, false, time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			ctx, done := d.Bound(tt.ctx)
			defer done()
			dl, ok := ctx.Deadline()
			assert.True(t, ok && dl.Sub(start) >= tt.want-time.Second && dl.Sub(start) <= tt.want+d.width+time.Second,
				"Bound(%s) deadline in %v, %v; want about %v", tt.name, dl.Sub(start), ok, tt.want)
			if tt.ctx != nil && tt.ctx.Value(ctxKey{}) != nil {
				assert.Equal(t, tt.ctx.Value(ctxKey{}), ctx.Value(ctxKey{}), "Bound(%s) lost the caller's value", tt.name)
			}
			_, isValues := ctx.(valuesCtx)
			assert.Equal(t, tt.shared, isValues || ctx == d.cur.Load().ctx, "Bound(%s) shared deadline", tt.name)
			if tt.name == "caller deadline" {
				assert.Equal(t, withDeadline, ctx, "a ctx with a deadline is used as it is")
			}
		})
	}
	// A cancellable ctx without a deadline still ends the call when the
	// caller cancels.
	ctx, done := d.Bound(cancelled)
	defer done()
	cancel()
	select {
	case <-ctx.Done():
	case <-time.After(time.Second):
		assert.Fail(t, "Bound(cancellable): the caller's cancel did not reach the bounded ctx")
	}
}

// TestBoundAllocations is not parallel: AllocsPerRun counts every
// allocation in the process.
func TestBoundAllocations(t *testing.T) {
	d := New(time.Second)
	valued := context.WithValue(context.Background(), ctxKey{}, 1)
	for _, tt := range []struct {
		name string
		ctx  context.Context
		max  float64
	}{
		{"background", context.Background(), 0},
		{"values", valued, 1},
	} {
		allocs := testing.AllocsPerRun(1000, func() {
			_, done := d.Bound(tt.ctx)
			done()
		})
		assert.LessOrEqual(t, allocs, tt.max, "Bound(%s) allocations", tt.name)
	}
}

// BenchmarkBound compares the shared deadline (background, values) with
// the context.WithTimeout that a cancellable ctx without a deadline still
// gets, in the same run.
func BenchmarkBound(b *testing.B) {
	d := New(time.Second)
	cancellable, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, bc := range []struct {
		name string
		ctx  context.Context
	}{
		{"background", context.Background()},
		{"values", context.WithValue(context.Background(), ctxKey{}, 1)},
		{"cancellable", cancellable},
	} {
		b.Run("ctx="+bc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				_, done := d.Bound(bc.ctx)
				done()
			}
		})
	}
}

// nearDeadline is a ctx whose deadline is in but has not fired yet: the
// instant in which a socket deadline derived from it may already have.
type nearDeadline struct {
	context.Context
	at time.Time
}

func (c nearDeadline) Deadline() (time.Time, bool) { return c.at, true }

func TestErr(t *testing.T) {
	t.Parallel()
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	// The subtests run after TestErr returns: cancel at Cleanup, not defer.
	expired, cancel2 := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	t.Cleanup(cancel2)
	far, cancel3 := context.WithTimeout(context.Background(), time.Hour)
	t.Cleanup(cancel3)
	tests := []struct {
		name string
		ctx  context.Context
		want error
	}{
		{"live", context.Background(), nil},
		{"far deadline", far, nil},
		{"cancelled", cancelled, context.Canceled},
		{"expired", expired, context.DeadlineExceeded},
		{"deadline in half a millisecond", nearDeadline{context.Background(), time.Now().Add(500 * time.Microsecond)}, context.DeadlineExceeded},
		{"deadline in a minute", nearDeadline{context.Background(), time.Now().Add(time.Minute)}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			assert.Equal(t, tt.want, Err(tt.ctx), "Err(%s)", tt.name)
		})
	}
}

func TestWrap(t *testing.T) {
	t.Parallel()
	expired, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	// What a socket deadline looks like from the client: an i/o timeout.
	ioTimeout := fmt.Errorf("read tcp: %w", os.ErrDeadlineExceeded)
	other := errors.New("connection reset")

	assert.NoError(t, Wrap(expired, nil), "Wrap(expired, nil)")
	assert.Same(t, ioTimeout, Wrap(context.Background(), ioTimeout), "Wrap(live ctx, err) returns err as it is")

	err := Wrap(expired, ioTimeout)
	require.ErrorIs(t, err, context.DeadlineExceeded, "Wrap(expired, i/o timeout)")
	require.ErrorIs(t, err, os.ErrDeadlineExceeded, "Wrap(expired, i/o timeout) keeps the cause")
	assert.Equal(t, "context deadline exceeded: read tcp: i/o timeout", err.Error())

	assert.ErrorIs(t, Wrap(expired, other), context.DeadlineExceeded, "Wrap(expired, other)")

	already := fmt.Errorf("dial: %w", context.DeadlineExceeded)
	assert.Same(t, already, Wrap(expired, already), "Wrap returns an error that already matches as it is")
}

func TestSleep(t *testing.T) {
	t.Parallel()
	done, cancel := context.WithCancel(context.Background())
	cancel()
	assert.False(t, Sleep(done, 0), "Sleep(ended ctx, 0)")
	assert.False(t, Sleep(done, time.Hour), "Sleep(ended ctx, 1h)")
	assert.True(t, Sleep(context.Background(), -time.Second), "Sleep(ctx, -1s)")
	start := time.Now()
	assert.True(t, Sleep(context.Background(), 20*time.Millisecond), "Sleep(ctx, 20ms)")
	assert.GreaterOrEqual(t, time.Since(start), 20*time.Millisecond, "Sleep(ctx, 20ms) returned early")

	ctx, cancel := context.WithCancel(context.Background())
	go cancel()
	assert.False(t, Sleep(ctx, time.Hour), "Sleep(ctx cancelled during the wait, 1h)")
}

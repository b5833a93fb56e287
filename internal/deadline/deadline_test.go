package deadline

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

type ctxKey struct{}

func TestSharedDeadlineWithinBound(t *testing.T) {
	t.Parallel()
	const timeout = 120 * time.Millisecond
	d := New(timeout)
	if d.width <= 0 || d.width > maxSlotWidth || d.width > timeout/64 {
		t.Fatalf("slot width = %v; want in (0, min(%v, timeout/64)]", d.width, maxSlotWidth)
	}
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
						ctx := d.bound(tt.ctx)
						end := time.Now()
						dl, ok := ctx.Deadline()
						if !ok {
							t.Errorf("bound(%s).Deadline() = _, false; want a deadline", tt.name)
							return
						}
						// The deadline is at least timeout after the call and at
						// most one slot width (plus scheduling slack) later.
						if dl.Before(start.Add(timeout)) || dl.After(end.Add(timeout+d.width+time.Millisecond)) {
							t.Errorf("goroutine %d call %d: deadline %v after the call; want in [%v, %v]",
								g, i, dl.Sub(start), timeout, timeout+d.width)
							return
						}
						if tt.ctx == valued && ctx.Value(ctxKey{}) != "v" {
							t.Errorf("bound(values).Value = %v; want the caller's value", ctx.Value(ctxKey{}))
							return
						}
						time.Sleep(time.Duration(i%3) * time.Millisecond)
					}
				})
			}
			wg.Wait()

			start := time.Now()
			ctx := d.bound(tt.ctx)
			select {
			case <-ctx.Done():
				if took := time.Since(start); took < timeout {
					t.Errorf("shared deadline ended after %v; want >= %v", took, timeout)
				}
				if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
					t.Errorf("ctx.Err() = %v; want DeadlineExceeded", ctx.Err())
				}
			case <-time.After(timeout + d.width + time.Second):
				t.Errorf("shared deadline still open %v after the call", timeout+d.width+time.Second)
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
			if !ok || dl.Sub(start) < tt.want-time.Second || dl.Sub(start) > tt.want+d.width+time.Second {
				t.Errorf("Bound(%s) deadline in %v, %v; want about %v", tt.name, dl.Sub(start), ok, tt.want)
			}
			if tt.ctx.Value(ctxKey{}) != nil && ctx.Value(ctxKey{}) != tt.ctx.Value(ctxKey{}) {
				t.Errorf("Bound(%s) lost the caller's value", tt.name)
			}
			if _, isValues := ctx.(valuesCtx); tt.shared != (isValues || ctx == d.cur.Load().ctx) {
				t.Errorf("Bound(%s) shared deadline = %v; want %v", tt.name, !tt.shared, tt.shared)
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
		t.Errorf("Bound(cancellable): the caller's cancel did not reach the bounded ctx")
	}
}

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
		if allocs > tt.max {
			t.Errorf("Bound(%s) = %v allocations; want <= %v", tt.name, allocs, tt.max)
		}
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

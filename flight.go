package redisservice

import (
	"context"
	"fmt"
	"reflect"
	"runtime/debug"
	"sync"
)

// flightGroup runs at most one load per key at a time and hands its
// result to every caller that asked for that key meanwhile. Unlike
// golang.org/x/sync/singleflight, the load runs in a goroutine of its own
// with a context that outlives any one caller: a caller whose ctx ends
// stops waiting, and the load's ctx is cancelled only when no caller is
// left. The zero value is ready to use.
type flightGroup struct {
	mu    sync.Mutex // guards calls and every flight's waiters
	calls map[flightKey]*flight
}

// flightKey names one load: the caller's key and the type it decodes to,
// so that Cache[int] and Cache[string] on one key never share a result.
type flightKey struct {
	key string
	typ reflect.Type
}

// flight is one load in progress.
type flight struct {
	done     chan struct{} // closed once val, err and panicked are set
	val      any
	err      error
	panicked *panicError // non-nil when the load panicked

	waiters int                // callers still waiting; guarded by flightGroup.mu
	cancel  context.CancelFunc // cancels the load's ctx
}

// panicError carries a load's panic, with the stack of the goroutine that
// panicked, to the callers that waited for it.
type panicError struct {
	value any
	stack []byte
}

func (p *panicError) Error() string {
	return fmt.Sprintf("redisservice: cache loader panicked: %v\n\n%s", p.value, p.stack)
}

// Unwrap returns the panic value when it is an error.
func (p *panicError) Unwrap() error {
	err, _ := p.value.(error)
	return err
}

// do returns fn's result for k. It starts fn in a new goroutine unless a
// call for k is in flight, in which case it waits for that one. ctx bounds
// only this caller's wait: when it ends first, do returns ctx.Err(), and a
// ctx that has already ended starts nothing. fn's
// ctx carries the values of the ctx of the caller that started it and is
// cancelled once every waiting caller has gone, or when fn returns. A
// panic in fn is re-raised in every caller still waiting; when fn calls
// runtime.Goexit, they get errGoexit.
func (g *flightGroup) do(ctx context.Context, k flightKey, fn func(context.Context) (any, error)) (any, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	g.mu.Lock()
	if g.calls == nil {
		g.calls = make(map[flightKey]*flight)
	}
	f, ok := g.calls[k]
	if ok {
		f.waiters++
	} else {
		lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		f = &flight{done: make(chan struct{}), waiters: 1, cancel: cancel}
		g.calls[k] = f
		go g.run(lctx, k, f, fn)
	}
	g.mu.Unlock()

	select {
	case <-f.done:
	case <-ctx.Done():
		select {
		case <-f.done: // finished meanwhile: the result is better than an error
		default:
			g.leave(k, f)
			return nil, ctx.Err()
		}
	}
	if f.panicked != nil {
		panic(f.panicked)
	}
	return f.val, f.err
}

// leave takes one waiter off f. The last one cancels the load and forgets
// it, so that a caller arriving later starts a fresh load instead of
// joining a cancelled one.
func (g *flightGroup) leave(k flightKey, f *flight) {
	g.mu.Lock()
	f.waiters--
	last := f.waiters == 0
	if last && g.calls[k] == f {
		delete(g.calls, k)
	}
	g.mu.Unlock()
	if last {
		f.cancel()
	}
}

// run runs fn for f and publishes its result: fn's value and error, its
// panic, or errGoexit when fn called runtime.Goexit, so that no caller
// waits for a result that never comes nor takes a missing one for a nil
// value.
func (g *flightGroup) run(ctx context.Context, k flightKey, f *flight, fn func(context.Context) (any, error)) {
	returned := false
	defer func() {
		if !returned {
			if r := recover(); r != nil {
				f.panicked = &panicError{value: r, stack: debug.Stack()}
			} else {
				f.val, f.err = nil, errGoexit
			}
		}
		// Forget f before waking its callers: one that calls again at once
		// starts a new load, which finds the value just stored.
		g.mu.Lock()
		if g.calls[k] == f {
			delete(g.calls, k)
		}
		g.mu.Unlock()
		f.cancel()
		close(f.done)
	}()
	f.val, f.err = fn(ctx)
	returned = true
}

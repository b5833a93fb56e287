package redisservice

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"runtime/debug"
	"sync"
	"time"
)

// flightGroup runs at most one load per key at a time and hands its
// result to every caller that asked for that key meanwhile. Unlike
// golang.org/x/sync/singleflight, the load runs in a goroutine of its own
// with a context of its own: it carries the values of the ctx of the
// caller that started it, ends after a fixed timeout or at close, and
// never with a caller. A caller whose ctx ends stops waiting; the load
// runs on, and callers that come meanwhile join it. The zero value is
// ready to use.
type flightGroup struct {
	mu      sync.Mutex // guards calls, closed, running and idle
	calls   map[flightKey]*flight
	closed  bool
	running int           // flights whose goroutine has not ended
	idle    chan struct{} // made by close, closed when running drops to 0

	forgot func(flightKey) // test hook (export_test.go): a flight was forgotten
}

// flightKey names one load: the caller's key and the type it decodes to,
// so that Cache[int] and Cache[string] on one key never share a result.
type flightKey struct {
	key string
	typ reflect.Type
}

// flight is one load in progress.
type flight struct {
	done     chan struct{} // closed once val and err are set
	val      any
	err      error
	deadline time.Time          // when the load's ctx ends
	cancel   context.CancelFunc // cancels the load's ctx
	waiters  int                // callers in wait; guarded by flightGroup.mu
}

// inFlight is the key of the context value that marks a load's ctx with
// its group and key: a call from inside the load for the same key would
// wait for itself.
type inFlight struct {
	g *flightGroup
	k flightKey
}

var (
	// errFlightsClosed is start's answer once close has begun: the
	// caller loads by itself.
	errFlightsClosed = errors.New("no loads start after Close")
	// errReentrant is start's answer to a load that asks for its own key.
	errReentrant = fmt.Errorf("%w: the loader calls Cache for the key it is loading", ErrInvalidArgument)
)

// panicError carries a load's panic, with the stack of the goroutine that
// panicked, to the callers that waited for it.
type panicError struct {
	value any
	stack []byte
}

func (p *panicError) Error() string { return fmt.Sprintf("panic: %v\n\n%s", p.value, p.stack) }

// Unwrap returns the panic value when it is an error.
func (p *panicError) Unwrap() error {
	err, _ := p.value.(error)
	return err
}

// newPanicError records r, recovered from a panic, with the stack of the
// goroutine that recovered it: call it in the deferred function.
func newPanicError(r any) *panicError {
	if p, ok := r.(*panicError); ok {
		return p
	}
	return &panicError{value: r, stack: debug.Stack()}
}

// reentrant reports whether ctx is the ctx of k's load in g, or derived
// from it.
func (g *flightGroup) reentrant(ctx context.Context, k flightKey) bool {
	return ctx.Value(inFlight{g, k}) != nil
}

// start returns k's flight, starting fn for it in a new goroutine unless
// one is in flight. fn's ctx carries ctx's values, not its cancellation,
// and ends after timeout or at close. start fails with errReentrant when
// ctx is that of k's own load, and with errFlightsClosed after close.
func (g *flightGroup) start(ctx context.Context, k flightKey, timeout time.Duration, fn func(context.Context) (any, error)) (*flight, error) {
	if g.reentrant(ctx, k) {
		return nil, errReentrant
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil, errFlightsClosed
	}
	if f, ok := g.calls[k]; ok {
		return f, nil
	}
	if g.calls == nil {
		g.calls = make(map[flightKey]*flight)
	}
	lctx, cancel := context.WithTimeout(context.WithValue(context.WithoutCancel(ctx), inFlight{g, k}, true), timeout)
	f := &flight{done: make(chan struct{}), cancel: cancel}
	f.deadline, _ = lctx.Deadline()
	g.calls[k] = f
	g.running++
	go g.run(lctx, k, f, fn)
	return f, nil
}

// wait returns f's result, or ctx's error when ctx ends first. A ctx
// without a deadline waits until grace past the load's deadline at most
// (room for what the load does after its ctx ended), then gets
// context.DeadlineExceeded.
func (g *flightGroup) wait(ctx context.Context, f *flight, grace time.Duration) (any, error) {
	g.mu.Lock()
	f.waiters++
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		f.waiters--
		g.mu.Unlock()
	}()
	var late <-chan time.Time
	if _, ok := ctx.Deadline(); !ok {
		t := time.NewTimer(time.Until(f.deadline.Add(grace)))
		defer t.Stop()
		late = t.C
	}
	select {
	case <-f.done:
		return f.val, f.err
	case <-ctx.Done():
	case <-late:
	}
	select {
	case <-f.done: // finished meanwhile: the result is better than an error
		return f.val, f.err
	default:
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return nil, context.DeadlineExceeded
}

// run runs fn for f and publishes its result: fn's value and error, its
// panic as a *panicError, or errGoexit when fn called runtime.Goexit, so
// that no caller waits for a result that never comes nor takes a missing
// one for a nil value.
func (g *flightGroup) run(ctx context.Context, k flightKey, f *flight, fn func(context.Context) (any, error)) {
	returned := false
	defer func() {
		if !returned {
			if r := recover(); r != nil {
				f.val, f.err = nil, newPanicError(r)
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
		g.running--
		if g.running == 0 && g.idle != nil {
			close(g.idle)
			g.idle = nil
		}
		forgot := g.forgot
		g.mu.Unlock()
		f.cancel()
		if forgot != nil {
			forgot(k)
		}
		close(f.done)
	}()
	f.val, f.err = fn(ctx)
	returned = true
}

// close cancels the ctx of every load in flight, makes start refuse new
// ones, and waits up to timeout for them to return. It reports whether
// they did.
func (g *flightGroup) close(timeout time.Duration) bool {
	g.mu.Lock()
	g.closed = true
	for _, f := range g.calls {
		f.cancel()
	}
	if g.running == 0 {
		g.mu.Unlock()
		return true
	}
	if g.idle == nil {
		g.idle = make(chan struct{})
	}
	idle := g.idle
	g.mu.Unlock()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-idle:
		return true
	case <-t.C:
		return false
	}
}

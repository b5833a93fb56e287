// Package flight shares work among the goroutines that ask for one key at
// the same time. A [Group] runs one load per key in a goroutine of its
// own, on a context detached from its callers and bounded by a timeout,
// and hands its result to every caller that asks meanwhile; a
// [ReadGroup] shares one read, run in its first caller's goroutine, among
// the callers that ask at the same moment. As in
// golang.org/x/sync/singleflight, no waiter hangs on a function that
// panics or calls runtime.Goexit: a Group's load answers its callers with
// a [*PanicError] or [ErrGoexit] (it never re-raises the panic), and a
// ReadGroup's waiters read for themselves.
package flight

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"time"
)

var (
	// ErrClosed is the answer of [Group.Do] and [Group.Start] once
	// [Group.Close] has begun.
	ErrClosed = errors.New("flight: no loads start after Close")
	// ErrReentrant is the answer of [Group.Do] and [Group.Start] to a
	// load that asks for its own key: it would wait for itself.
	ErrReentrant = errors.New("flight: a load asks for its own key")
	// ErrGoexit reports a function of a [Group] or [ReadGroup] that
	// called runtime.Goexit instead of returning.
	ErrGoexit = errors.New("runtime.Goexit was called")
)

// A PanicError carries a function's panic, with the stack of the
// goroutine that panicked, to the callers that waited for it.
type PanicError struct {
	Value any    // the value passed to panic
	Stack []byte // the stack of the goroutine that panicked, from debug.Stack
}

// Error returns the panic value and the stack.
func (p *PanicError) Error() string { return fmt.Sprintf("panic: %v\n\n%s", p.Value, p.Stack) }

// Unwrap returns the panic value when it is an error.
func (p *PanicError) Unwrap() error {
	err, _ := p.Value.(error)
	return err
}

// NewPanicError records r, recovered from a panic, with the stack of the
// goroutine that recovered it: call it in the deferred function. A
// *PanicError r is returned as it is.
func NewPanicError(r any) *PanicError {
	if p, ok := r.(*PanicError); ok {
		return p
	}
	return &PanicError{Value: r, Stack: debug.Stack()}
}

// A Group runs at most one load per key at a time and hands its result
// to every caller that asked for that key meanwhile. Unlike
// golang.org/x/sync/singleflight, the load runs in a goroutine of its own
// with a context of its own: it carries the values of the ctx of the
// caller that started it, ends after a timeout or at [Group.Close], and
// never with a caller. A caller whose ctx ends stops waiting; the load
// runs on, and callers that come meanwhile join it. A Group is safe for
// concurrent use. The zero value is ready to use.
type Group[K comparable] struct {
	mu      sync.Mutex // guards calls, closed, running, idle and forgot
	calls   map[K]*call
	closed  bool
	running int           // loads whose goroutine has not ended
	idle    chan struct{} // made by Close, closed when running drops to 0
	forgot  func(K)       // see OnForget
}

// call is one load in progress.
type call struct {
	done     chan struct{} // closed once val and err are set
	val      any
	err      error
	deadline time.Time          // when the load's ctx ends
	cancel   context.CancelFunc // cancels the load's ctx
	waiters  int                // callers in wait; guarded by Group.mu
}

// inFlight is the key of the context value that marks a load's ctx with
// its group and key: a call from inside the load for the same key would
// wait for itself.
type inFlight[K comparable] struct {
	g   *Group[K]
	key K
}

// Do returns fn's result for key, starting fn in a new goroutine unless a
// load of key is in flight, in which case it joins that one. The value is
// shared: callers must not modify what it points to.
//
// fn's ctx carries ctx's values, not its cancellation, and ends after
// timeout (that of the call that started the load) or at [Group.Close].
// Do returns when the load does or ctx ends, with ctx.Err(); a ctx
// without a deadline waits until timeout past the load's deadline at
// most (room for what the load does after its ctx ended), then gets
// context.DeadlineExceeded. A panic in fn is returned as a [*PanicError],
// runtime.Goexit as [ErrGoexit]. Do fails with [ErrReentrant] when ctx is
// that of key's own load, or derived from it, and with [ErrClosed] after
// Close. The errors of Do itself are returned unwrapped; fn's as they
// are.
func (g *Group[K]) Do(ctx context.Context, key K, timeout time.Duration, fn func(context.Context) (any, error)) (any, error) {
	c, err := g.start(ctx, key, timeout, fn)
	if err != nil {
		return nil, err
	}
	return g.wait(ctx, c, timeout)
}

// Start is [Group.Do] without the wait: it starts fn for key, with a ctx
// as Do gives it, unless a load of key is in flight, and returns at once.
// Its errors are Do's refusals, [ErrReentrant] and [ErrClosed].
func (g *Group[K]) Start(ctx context.Context, key K, timeout time.Duration, fn func(context.Context) (any, error)) error {
	_, err := g.start(ctx, key, timeout, fn)
	return err
}

// Close cancels the ctx of every load in flight, makes Do and Start
// refuse new ones with [ErrClosed], and waits for the loads to return
// until ctx ends. It returns ctx.Err() when some are still running then,
// and nil otherwise. Calling it again waits again.
func (g *Group[K]) Close(ctx context.Context) error {
	g.mu.Lock()
	g.closed = true
	for _, c := range g.calls {
		c.cancel()
	}
	if g.running == 0 {
		g.mu.Unlock()
		return nil
	}
	if g.idle == nil {
		g.idle = make(chan struct{})
	}
	idle := g.idle
	g.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Waiters returns how many callers of [Group.Do] wait for key's load, or
// -1 when no load of key is in flight. It is there for tests that wait
// for callers to line up.
func (g *Group[K]) Waiters(key K) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if c, ok := g.calls[key]; ok {
		return c.waiters
	}
	return -1
}

// OnForget makes g call fn with a load's key as the load ends and g
// forgets it, before its callers wake: fn runs in the load's goroutine,
// and a call from fn for the key starts a new load. It is there for tests
// of an invariant that spans a Group and its user. A nil fn removes it.
func (g *Group[K]) OnForget(fn func(key K)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.forgot = fn
}

// start returns key's load, starting fn for it in a new goroutine unless
// one is in flight.
func (g *Group[K]) start(ctx context.Context, key K, timeout time.Duration, fn func(context.Context) (any, error)) (*call, error) {
	if ctx.Value(inFlight[K]{g, key}) != nil {
		return nil, ErrReentrant
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil, ErrClosed
	}
	if c, ok := g.calls[key]; ok {
		return c, nil
	}
	if g.calls == nil {
		g.calls = make(map[K]*call)
	}
	lctx, cancel := context.WithTimeout(context.WithValue(context.WithoutCancel(ctx), inFlight[K]{g, key}, true), timeout)
	c := &call{done: make(chan struct{}), cancel: cancel}
	c.deadline, _ = lctx.Deadline()
	g.calls[key] = c
	g.running++
	go g.run(lctx, key, c, fn)
	return c, nil
}

// wait returns c's result, or ctx's error when ctx ends first. A ctx
// without a deadline waits until grace past the load's deadline at most,
// then gets context.DeadlineExceeded.
func (g *Group[K]) wait(ctx context.Context, c *call, grace time.Duration) (any, error) {
	g.mu.Lock()
	c.waiters++
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		c.waiters--
		g.mu.Unlock()
	}()
	var late <-chan time.Time
	if _, ok := ctx.Deadline(); !ok {
		t := time.NewTimer(time.Until(c.deadline.Add(grace)))
		defer t.Stop()
		late = t.C
	}
	select {
	case <-c.done:
		return c.val, c.err
	case <-ctx.Done():
	case <-late:
	}
	select {
	case <-c.done: // finished meanwhile: the result is better than an error
		return c.val, c.err
	default:
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return nil, context.DeadlineExceeded
}

// run runs fn for c and publishes its result: fn's value and error, its
// panic as a *PanicError, or ErrGoexit when fn called runtime.Goexit, so
// that no caller waits for a result that never comes nor takes a missing
// one for a nil value.
func (g *Group[K]) run(ctx context.Context, key K, c *call, fn func(context.Context) (any, error)) {
	returned := false
	defer func() {
		if !returned {
			if r := recover(); r != nil {
				c.val, c.err = nil, NewPanicError(r)
			} else {
				c.val, c.err = nil, ErrGoexit
			}
		}
		// Forget c before waking its callers: one that calls again at once
		// starts a new load, which finds the value just stored.
		g.mu.Lock()
		if g.calls[key] == c {
			delete(g.calls, key)
		}
		g.running--
		if g.running == 0 && g.idle != nil {
			close(g.idle)
			g.idle = nil
		}
		forgot := g.forgot
		g.mu.Unlock()
		c.cancel()
		if forgot != nil {
			forgot(key)
		}
		close(c.done)
	}()
	c.val, c.err = fn(ctx)
	returned = true
}

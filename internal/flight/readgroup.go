package flight

import (
	"context"
	"sync"
	"time"

	ctxdeadline "github.com/vevurn/redisservice/internal/deadline" // Get has a local deadline
)

// A ReadGroup shares one read among the callers that read the same key at
// the same moment, so that a hot key costs one round trip per burst
// instead of one per caller. Unlike a [Group], the read runs in the first
// caller's goroutine and on its ctx: a hit must stay as cheap as one
// read. A ReadGroup is safe for concurrent use. The zero value is ready
// to use.
type ReadGroup[K comparable, V any] struct {
	mu    sync.Mutex // guards reads and every read's waiters
	reads map[K]*read[V]
}

// read is one read in progress.
type read[V any] struct {
	done     chan struct{} // closed once v, err and ended are set
	v        V
	err      error
	ended    bool      // the reader's ctx had ended when err came: err is the reader's, not Redis's
	deadline time.Time // by when the reader gets its answer
	waiters  int       // callers sharing this read; guarded by ReadGroup.mu
}

// Get returns fn's result for key, calling fn unless a read of key is in
// flight, in which case it waits for that one. The value is shared:
// callers must not modify what it points to.
//
// Each caller gets its answer by its own deadline: ctx's, or timeout from
// the moment it called Get. A caller that would otherwise wait past it,
// for a read bound by a later deadline, stops waiting with
// context.DeadlineExceeded; so does one whose ctx ends, with ctx.Err().
// When the shared read failed because its reader's ctx ended, a waiter
// whose ctx is live reads for itself, until its own deadline and no
// later: fn's until is then that deadline, and the zero time when fn
// runs for the first caller, bound by its ctx as usual. The errors of Get
// itself are context errors, unwrapped; fn's are returned as they are.
// A panic in fn, or runtime.Goexit, goes on up its caller's goroutine;
// its waiters read for themselves as above, or get [ErrGoexit] when their
// own ctx has ended too.
func (g *ReadGroup[K, V]) Get(ctx context.Context, key K, timeout time.Duration, fn func(ctx context.Context, until time.Time) (V, error)) (V, error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(timeout)
	}
	g.mu.Lock()
	if r, ok := g.reads[key]; ok {
		r.waiters++
		g.mu.Unlock()
		return r.wait(ctx, deadline, fn)
	}
	if g.reads == nil {
		g.reads = make(map[K]*read[V])
	}
	r := &read[V]{done: make(chan struct{}), deadline: deadline}
	g.reads[key] = r
	g.mu.Unlock()

	returned := false
	defer func() {
		if !returned {
			// fn panicked or called runtime.Goexit: there is no reply, and
			// the waiters read for themselves.
			r.err, r.ended = ErrGoexit, true
		}
		g.mu.Lock()
		delete(g.reads, key)
		g.mu.Unlock()
		close(r.done)
	}()
	r.v, r.err = fn(ctx, time.Time{})
	r.ended = r.err != nil && ctxdeadline.Err(ctx) != nil
	returned = true
	return r.v, r.err
}

// wait waits for r on behalf of a caller whose own deadline is deadline.
func (r *read[V]) wait(ctx context.Context, deadline time.Time, fn func(context.Context, time.Time) (V, error)) (V, error) {
	var zero V
	var late <-chan time.Time
	if r.deadline.After(deadline) {
		// Only when the reader may take longer than this caller may wait:
		// most waiters need no timer.
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		late = t.C
	}
	select {
	case <-r.done:
	case <-ctx.Done():
		return zero, ctx.Err()
	case <-late:
		return zero, context.DeadlineExceeded
	}
	if !r.ended || ctx.Err() != nil {
		return r.v, r.err
	}
	if time.Until(deadline) <= 0 {
		return zero, context.DeadlineExceeded
	}
	return fn(ctx, deadline)
}

// Waiters returns how many callers wait for the read of key in flight
// besides its reader, or -1 when no read of key is in flight. It is there
// for tests that wait for callers to line up.
func (g *ReadGroup[K, V]) Waiters(key K) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if r, ok := g.reads[key]; ok {
		return r.waiters
	}
	return -1
}

// Package deadline bounds calls in time. A [Bounder] gives a context
// without a deadline one, sharing a deadline among the calls whose
// context can never end instead of a timer each; [Err] and [Wrap] tell a
// socket timeout that a context's deadline caused from other failures.
package deadline

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
)

// This file bounds calls whose context can never end (Background, TODO,
// or values over them) without a timer per call: such calls share one
// deadline context per short slot of time. A context.WithTimeout per call
// costs four allocations and a runtime timer; a shared slot costs none,
// or one small allocation when the caller's ctx carries values.

// maxSlotWidth caps how much later than the timeout a shared deadline
// may fall.
const maxSlotWidth = 10 * time.Millisecond

// A Bounder bounds calls, sharing deadline contexts. A call that starts in the
// slot [start, start+width) gets the deadline start+width+timeout: never
// less than timeout away, and at most width more. A Bounder is safe for
// concurrent use. The zero value is not usable: use [New].
type Bounder struct {
	timeout time.Duration
	width   time.Duration
	epoch   time.Time // carries the monotonic clock that slot times count from
	cur     atomic.Pointer[deadlineSlot]
}

// deadlineSlot is one shared deadline context. Its timer releases it at
// the deadline; nothing else needs to.
type deadlineSlot struct {
	ctx    context.Context
	cancel context.CancelFunc // kept for vet; the deadline cancels it
	end    time.Duration      // since epoch: calls starting before end share ctx
}

// New returns a Bounder that bounds calls by timeout, which must be
// positive and small enough to add to the current time.
func New(timeout time.Duration) *Bounder {
	return &Bounder{
		timeout: timeout,
		width:   min(maxSlotWidth, max(timeout/64, time.Microsecond)),
		epoch:   time.Now(),
	}
}

// Bound returns ctx bounded for one call, and the function that releases
// it, which the caller calls when the call ends. A ctx with a deadline is
// returned as it is. One that can never end (a nil Done channel) gets a
// shared deadline that carries its values, at no cost to release. Any
// other gets context.WithTimeout, so that its cancellation still ends
// the call. A nil ctx is taken as context.Background().
func (d *Bounder) Bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if ctx == nil {
		ctx = context.Background()
	}
	if _, ok := ctx.Deadline(); ok {
		return ctx, noop
	}
	if ctx.Done() == nil {
		// ctx can never end, so nothing needs to be merged with it: share
		// a deadline with the calls starting about now instead of paying
		// for a timer per call.
		return d.bound(ctx), noop
	}
	return context.WithTimeout(ctx, d.timeout)
}

func noop() {}

// bound returns a context that ends within timeout (plus at most one slot
// width) from now and that carries ctx's values. ctx must have no deadline
// and a nil Done channel: it can never end by itself.
func (d *Bounder) bound(ctx context.Context) context.Context {
	sc := d.slot()
	if ctx == context.Background() || ctx == context.TODO() { //nolint:contextcheck // identity test only
		return sc
	}
	return valuesCtx{Context: sc, values: ctx}
}

// slot returns the current slot's context, starting a new slot when the
// current one has ended.
func (d *Bounder) slot() context.Context {
	now := time.Since(d.epoch)
	if s := d.cur.Load(); s != nil && now < s.end {
		return s.ctx
	}
	end := (now/d.width + 1) * d.width
	ctx, cancel := context.WithDeadline(context.Background(), d.epoch.Add(end+d.timeout))
	s := &deadlineSlot{ctx: ctx, cancel: cancel, end: end}
	for {
		old := d.cur.Load()
		if old != nil && old.end >= end {
			// Another call started this slot, or a later one, first.
			cancel()
			return old.ctx
		}
		if d.cur.CompareAndSwap(old, s) {
			return ctx
		}
	}
}

// valuesCtx is a shared deadline context that answers Value from the
// caller's ctx, so that hooks (tracing, logging) still see the caller's
// values.
type valuesCtx struct {
	context.Context
	values context.Context
}

func (c valuesCtx) Value(key any) any { return c.values.Value(key) }

// Err returns ctx.Err(), or [context.DeadlineExceeded] already when ctx's
// deadline is at most a millisecond away: the socket deadline that a
// client derives from ctx may fire in the instant before ctx's own timer.
func Err(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= time.Millisecond {
		return context.DeadlineExceeded
	}
	return nil
}

// Wrap returns err, a call's failure under ctx, with ctx's error (see
// [Err]) reachable through errors.Is as well when ctx has ended: the
// socket reports the deadline as an i/o timeout. It returns err as it is
// when err is nil, when ctx has not ended, or when err already matches.
func Wrap(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if cerr := Err(ctx); cerr != nil && !errors.Is(err, cerr) {
		return fmt.Errorf("%w: %w", cerr, err)
	}
	return err
}

// Sleep waits for d and reports whether it did: false, at once, when ctx
// has ended or ends first (a ctx that ended before the call never loses
// the race to a timer that fired meanwhile). A d of zero or less waits
// for nothing.
func Sleep(ctx context.Context, d time.Duration) bool {
	if ctx.Err() != nil {
		return false
	}
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Package breaker holds the one fast-fail mechanism. Once a call has
// found Redis unreachable for a reason other than its caller's own
// context, a [Breaker] is down: the calls after it can fail at once
// instead of each waiting for a dial, a retry backoff or a timeout, and
// one background PING at a time asks Redis until it answers.
// [NoRetryOnRefused] keeps go-redis from retrying a refused dial.
package breaker

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vevurn/redisservice/internal/deadline"
)

// probeInterval is the least time between the starts of two background
// PINGs while Redis is down: a PING that fails at once (a refused port) is
// repeated ten times a second, one that times out (a stalled server) right
// after its Timeout.
const probeInterval = 100 * time.Millisecond

// A Breaker records whether Redis answers and, while it does not, PINGs
// it in the background until it does. It is safe for concurrent use. The
// zero value is not usable: use [New].
type Breaker struct {
	failFast bool
	timeout  time.Duration
	ping     func(context.Context) error
	start    func(func(context.Context)) bool

	connected atomic.Bool
	probing   atomic.Bool // probeLoop is running
}

// New returns a Breaker that takes Redis as up until told otherwise.
// ping asks Redis once; each background PING gets a ctx bounded by
// timeout. start runs its function in the background with a ctx that
// ends when the owner closes, and reports false, running nothing, once
// the owner has begun to close. failFast says whether
// [Breaker.Unavailable] may report true: on Redis Cluster one master
// down says nothing about the others, so there the Breaker only tracks
// the state.
func New(failFast bool, timeout time.Duration, ping func(context.Context) error, start func(func(context.Context)) bool) *Breaker {
	b := &Breaker{failFast: failFast, timeout: timeout, ping: ping, start: start}
	b.connected.Store(true)
	return b
}

// Unavailable reports whether calls should fail fast: Redis was found
// unreachable and no PING or call has seen it answer since.
func (b *Breaker) Unavailable() bool {
	return b.failFast && !b.connected.Load()
}

// Connected reports the last observed state: false after [Breaker.MarkDown],
// true again after [Breaker.MarkUp] or a background PING that Redis
// answers.
func (b *Breaker) Connected() bool {
	return b.connected.Load()
}

// MarkUp records that Redis answered, which proves the connection works.
func (b *Breaker) MarkUp() {
	if !b.connected.Load() {
		b.connected.Store(true)
	}
}

// MarkDown records that a call found Redis unreachable and starts the
// background PINGs that will see it answer again.
func (b *Breaker) MarkDown() {
	if b.connected.CompareAndSwap(true, false) {
		b.startProbe()
	}
}

// startProbe runs probeLoop in the background unless it is running.
func (b *Breaker) startProbe() {
	if !b.probing.CompareAndSwap(false, true) {
		return
	}
	if !b.start(b.probeLoop) {
		b.probing.Store(false)
	}
}

// probeLoop PINGs Redis, each PING bounded by the timeout and started
// at most every probeInterval, until one is answered or ctx ends.
func (b *Breaker) probeLoop(ctx context.Context) {
	for {
		for !b.connected.Load() {
			start := time.Now()
			if b.pingOnce(ctx) == nil {
				b.connected.Store(true)
				break
			}
			if !deadline.Sleep(ctx, probeInterval-time.Since(start)) {
				b.probing.Store(false)
				return
			}
		}
		b.probing.Store(false)
		// A call may have marked Redis down again between the PING and
		// the Store above, finding probing still set: go on for it.
		if b.connected.Load() || !b.probing.CompareAndSwap(false, true) {
			return
		}
	}
}

// pingOnce PINGs Redis within the timeout.
func (b *Breaker) pingOnce(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	return b.ping(ctx)
}

// refusedError is a refused dial. It matches [syscall.ECONNREFUSED] with
// [errors.Is] but unwraps to nothing, hiding the dial's *net.OpError (and
// the errno's Timeout method) from go-redis, which would otherwise retry
// it after a backoff (about 50 ms a call with MaxRetries 2): nothing
// listens, and trying again a few milliseconds later will not change that.
type refusedError struct{ err error }

func (e refusedError) Error() string { return e.err.Error() }

// Is reports whether target is syscall.ECONNREFUSED.
func (e refusedError) Is(target error) bool { return target == syscall.ECONNREFUSED } //nolint:errorlint // an errno is compared by value

// NoRetryOnRefused wraps a go-redis dialer so that a refused dial fails
// without go-redis's retries: its error still matches
// [syscall.ECONNREFUSED] with errors.Is, with the same text, but unwraps
// to nothing. Every other dial is returned as it is.
func NoRetryOnRefused(dial func(context.Context, string, string) (net.Conn, error)) func(context.Context, string, string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil && errors.Is(err, syscall.ECONNREFUSED) {
			return nil, refusedError{err}
		}
		return c, err
	}
}

// Package breaker fails calls fast while Redis is known to be down.
package breaker

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"syscall"
	"time"
)

// This file holds the Service's one fast-fail mechanism. Once a call has
// found Redis unreachable for a reason other than its caller's own
// context, the Service is "down": the calls after it return their
// fallback at once with [ErrUnavailable] instead of each waiting for a
// dial, a retry backoff or Options.Timeout, and one background PING at a
// time asks Redis until it answers. Only a single-node client (a
// *redis.Client: a dialled URL, or a Sentinel failover client) fails
// fast; on Redis Cluster one master down says nothing about the keys of
// the others, so there every call still tries its own node.

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
// ping asks Redis once, within a ctx bounded by timeout; start runs a
// function in the background and reports false, running nothing, once
// the owner closes; failFast says whether Unavailable may report true.
func New(failFast bool, timeout time.Duration, ping func(context.Context) error, start func(func(context.Context)) bool) *Breaker {
	s := &Breaker{failFast: failFast, timeout: timeout, ping: ping, start: start}
	s.connected.Store(true)
	return s
}

// Unavailable reports whether calls should fail fast: Redis was found
// unreachable and no PING or call has seen it answer since.
func (s *Breaker) Unavailable() bool {
	return s.failFast && !s.connected.Load()
}

// Connected reports the last observed state of the connection.
func (s *Breaker) Connected() bool {
	return s.connected.Load()
}

// MarkUp records that Redis answered, which proves the connection works.
func (s *Breaker) MarkUp() {
	if !s.connected.Load() {
		s.connected.Store(true)
	}
}

// MarkDown records that a call found Redis unreachable and starts the
// background PINGs that will see it answer again.
func (s *Breaker) MarkDown() {
	if s.connected.CompareAndSwap(true, false) {
		s.startProbe()
	}
}

// startProbe runs probeLoop in the background unless it is running.
func (s *Breaker) startProbe() {
	if !s.probing.CompareAndSwap(false, true) {
		return
	}
	if !s.start(s.probeLoop) {
		s.probing.Store(false)
	}
}

// probeLoop PINGs Redis, each PING bounded by the timeout and started
// at most every probeInterval, until one is answered or ctx ends.
func (s *Breaker) probeLoop(ctx context.Context) {
	for {
		for !s.connected.Load() {
			start := time.Now()
			if s.pingOnce(ctx) == nil {
				s.connected.Store(true)
				break
			}
			if !sleep(ctx, probeInterval-time.Since(start)) {
				s.probing.Store(false)
				return
			}
		}
		s.probing.Store(false)
		// A call may have marked Redis down again between the PING and
		// the Store above, finding probing still set: go on for it.
		if s.connected.Load() || !s.probing.CompareAndSwap(false, true) {
			return
		}
	}
}

// pingOnce PINGs Redis within the timeout.
func (s *Breaker) pingOnce(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	return s.ping(ctx)
}

// sleep waits for d, and reports false, at once, when ctx ends first.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
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
// without go-redis's retries.
func NoRetryOnRefused(dial func(context.Context, string, string) (net.Conn, error)) func(context.Context, string, string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil && errors.Is(err, syscall.ECONNREFUSED) {
			return nil, refusedError{err}
		}
		return c, err
	}
}

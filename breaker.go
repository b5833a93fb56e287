package redisservice

import (
	"context"
	"errors"
	"net"
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

// unavailable reports whether calls should fail fast: Redis was found
// unreachable and no PING or call has seen it answer since.
func (s *Service) unavailable() bool {
	return s.failFast && !s.connected.Load()
}

// skipWhileDown returns [ErrUnavailable], wrapped and counted as a failed
// call with its fallback, while calls fail fast (see [Service.unavailable]).
// After Close it returns nil, leaving [ErrClosed] to call.
func (s *Service) skipWhileDown(op, key string) error {
	if s.closed.Load() || !s.unavailable() {
		return nil
	}
	return s.fail(context.Background(), op, key, ErrUnavailable)
}

// markDown records that a call found Redis unreachable and starts the
// background PINGs that will see it answer again.
func (s *Service) markDown() {
	if s.connected.CompareAndSwap(true, false) {
		s.startProbe()
	}
}

// startProbe runs probeLoop in the background unless it is running.
func (s *Service) startProbe() {
	if !s.probing.CompareAndSwap(false, true) {
		return
	}
	if !s.goBackground(s.probeLoop) {
		s.probing.Store(false)
	}
}

// probeLoop PINGs Redis, each PING bounded by Options.Timeout and started
// at most every probeInterval, until one is answered or Close cancels ctx.
func (s *Service) probeLoop(ctx context.Context) {
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

// pingOnce PINGs Redis (every master of a cluster) within Options.Timeout,
// counting nothing.
func (s *Service) pingOnce(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	return s.pingAll(ctx)
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

// noRetryOnRefused wraps a go-redis dialer so that a refused dial fails
// without go-redis's retries.
func noRetryOnRefused(dial func(context.Context, string, string) (net.Conn, error)) func(context.Context, string, string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil && errors.Is(err, syscall.ECONNREFUSED) {
			return nil, refusedError{err}
		}
		return c, err
	}
}

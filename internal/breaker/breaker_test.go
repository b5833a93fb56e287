package breaker

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// runner runs background work as a Breaker's owner does: Close cancels
// its ctx and waits for it, and start refuses after Close.
type runner struct {
	mu     sync.Mutex // orders wg.Add after the closed check with Close's wg.Wait
	closed bool
	wg     sync.WaitGroup
	ctx    context.Context
	cancel context.CancelFunc
}

func newRunner(tb testing.TB) *runner {
	tb.Helper()
	r := &runner{}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	tb.Cleanup(r.Close)
	return r
}

func (r *runner) start(fn func(context.Context)) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		fn(r.ctx)
	}()
	return true
}

func (r *runner) Close() {
	r.mu.Lock()
	r.closed = true
	r.cancel()
	r.mu.Unlock()
	r.wg.Wait()
}

// pinger is a server that answers a ping once fails reaches zero.
type pinger struct {
	fails    atomic.Int64 // pings still to fail; < 0 fails for ever
	delay    time.Duration
	calls    atomic.Int64
	inflight atomic.Int64
	most     atomic.Int64 // the most pings seen in flight at once

	mu     sync.Mutex // guards starts and limits
	starts []time.Time
	limits []time.Duration // each ping's ctx deadline, from its start; -1 for none
}

var errDown = errors.New("connection refused")

func (p *pinger) ping(ctx context.Context) error {
	now := time.Now()
	p.calls.Add(1)
	n := p.inflight.Add(1)
	defer p.inflight.Add(-1)
	for {
		m := p.most.Load()
		if n <= m || p.most.CompareAndSwap(m, n) {
			break
		}
	}
	limit := time.Duration(-1)
	if dl, ok := ctx.Deadline(); ok {
		limit = dl.Sub(now)
	}
	p.mu.Lock()
	p.starts = append(p.starts, now)
	p.limits = append(p.limits, limit)
	p.mu.Unlock()
	if p.delay > 0 {
		select {
		case <-time.After(p.delay):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if p.fails.Load() < 0 || p.fails.Add(-1) >= 0 {
		return errDown
	}
	return nil
}

// idle reports whether no probe loop runs.
func (b *Breaker) idle() bool { return !b.probing.Load() }

func TestNewStartsConnected(t *testing.T) {
	t.Parallel()
	p := &pinger{}
	b := New(true, time.Second, p.ping, newRunner(t).start)
	assert.True(t, b.Connected())
	assert.False(t, b.Unavailable())
	b.MarkUp()
	assert.True(t, b.Connected())
	assert.Zero(t, p.calls.Load(), "pings while up")
}

func TestMarkDownProbesUntilAnswered(t *testing.T) {
	t.Parallel()
	for _, failFast := range []bool{true, false} {
		name := "failFast"
		if !failFast {
			name = "trackOnly"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p := &pinger{}
			p.fails.Store(3)
			b := New(failFast, time.Second, p.ping, newRunner(t).start)
			b.MarkDown()
			assert.Equal(t, failFast, b.Unavailable(), "Unavailable after MarkDown")
			require.Eventually(t, b.Connected, 10*time.Second, time.Millisecond, "Connected once a ping is answered")
			assert.False(t, b.Unavailable(), "Unavailable once up")
			require.Eventually(t, b.idle, 10*time.Second, time.Millisecond, "the probe loop ends once up")
			assert.EqualValues(t, 4, p.calls.Load(), "pings: three failed, one answered")
			p.mu.Lock()
			defer p.mu.Unlock()
			// The Breaker spaces the starts of its pings by probeInterval;
			// seen from inside ping, a start may lag by a scheduling delay.
			for i := 1; i < len(p.starts); i++ {
				assert.GreaterOrEqual(t, p.starts[i].Sub(p.starts[i-1]), probeInterval/2, "time between the starts of pings %d and %d", i-1, i)
			}
		})
	}
}

func TestProbeBoundedByTimeout(t *testing.T) {
	t.Parallel()
	const timeout = 50 * time.Millisecond
	p := &pinger{delay: time.Hour} // a stalled server
	p.fails.Store(-1)
	r := newRunner(t)
	b := New(true, timeout, p.ping, r.start)
	b.MarkDown()
	require.Eventually(t, func() bool { return p.calls.Load() >= 2 }, 10*time.Second, time.Millisecond,
		"a second ping once the first timed out")
	p.mu.Lock()
	for i, l := range p.limits {
		// At most timeout: the deadline is set just before ping starts.
		assert.True(t, l != -1 && l <= timeout, "ping %d's ctx ends %v after it starts; want within %v", i, l, timeout)
	}
	p.mu.Unlock()
	assert.False(t, b.Connected())
	r.Close()
	assert.True(t, b.idle(), "the probe loop ends when its ctx does")
}

func TestMarkUpEndsProbing(t *testing.T) {
	t.Parallel()
	p := &pinger{}
	p.fails.Store(-1)
	b := New(true, time.Second, p.ping, newRunner(t).start)
	b.MarkDown()
	require.Eventually(t, func() bool { return p.calls.Load() >= 1 }, 10*time.Second, time.Millisecond)
	b.MarkUp() // a call saw the server answer
	assert.True(t, b.Connected())
	assert.False(t, b.Unavailable())
	require.Eventually(t, b.idle, 10*time.Second, time.Millisecond, "the probe loop ends once up")
	calls := p.calls.Load()
	time.Sleep(3 * probeInterval)
	assert.Equal(t, calls, p.calls.Load(), "pings after the probe loop ended")
}

// TestOneProbeAtATime: however calls mark the server up and down, at
// most one ping is in flight, and a server marked down is always probed
// until it answers.
func TestOneProbeAtATime(t *testing.T) {
	t.Parallel()
	p := &pinger{delay: time.Millisecond}
	p.fails.Store(-1)
	b := New(true, time.Second, p.ping, newRunner(t).start)
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 500 {
				if (g+i)%3 == 0 {
					b.MarkUp()
				} else {
					b.MarkDown()
				}
			}
		})
	}
	wg.Wait()
	p.fails.Store(0)
	b.MarkDown()
	require.Eventually(t, b.Connected, 10*time.Second, time.Millisecond, "Connected once the server answers")
	require.Eventually(t, b.idle, 10*time.Second, time.Millisecond, "the probe loop ends once up")
	assert.EqualValues(t, 1, p.most.Load(), "pings in flight at once")
	assert.Positive(t, p.calls.Load())
}

// TestStartRefused: an owner that is closing starts nothing, and the
// Breaker stays able to probe later.
func TestStartRefused(t *testing.T) {
	t.Parallel()
	p := &pinger{}
	refuse := true
	r := newRunner(t)
	start := func(fn func(context.Context)) bool {
		if refuse {
			return false
		}
		return r.start(fn)
	}
	b := New(true, time.Second, p.ping, start)
	b.MarkDown()
	assert.False(t, b.Connected())
	assert.True(t, b.idle(), "no probe loop after a refused start")
	assert.Zero(t, p.calls.Load())

	refuse = false
	b.MarkUp()
	b.MarkDown()
	require.Eventually(t, b.Connected, 10*time.Second, time.Millisecond)
	assert.EqualValues(t, 1, p.calls.Load())
}

func TestNoRetryOnRefused(t *testing.T) {
	t.Parallel()
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	timedOut := &net.OpError{Op: "dial", Net: "tcp", Err: os.ErrDeadlineExceeded}
	c1, c2 := net.Pipe()
	t.Cleanup(func() { c1.Close(); c2.Close() })
	tests := []struct {
		name    string
		conn    net.Conn
		err     error
		refused bool
	}{
		{"refused", nil, refused, true},
		{"timed out", nil, timedOut, false},
		{"connected", c1, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dial := NoRetryOnRefused(func(context.Context, string, string) (net.Conn, error) { return tt.conn, tt.err })
			c, err := dial(context.Background(), "tcp", "127.0.0.1:1")
			assert.Equal(t, tt.conn, c)
			if !tt.refused {
				assert.Equal(t, tt.err, err, "a dial that was not refused is returned as it is")
				return
			}
			require.ErrorIs(t, err, syscall.ECONNREFUSED)
			assert.Equal(t, tt.err.Error(), err.Error())
			var ne net.Error
			assert.False(t, errors.As(err, &ne), "a refused dial's error unwraps to a net.Error (%T), which go-redis retries", ne)
			assert.Nil(t, errors.Unwrap(err))
		})
	}
}

// TestNoRetryOnRefusedRealDial dials a port nothing listens on.
func TestNoRetryOnRefusedRealDial(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	var d net.Dialer
	dial := NoRetryOnRefused(d.DialContext)
	c, err := dial(context.Background(), "tcp", addr)
	require.ErrorIs(t, err, syscall.ECONNREFUSED)
	assert.Nil(t, c)
	var ne net.Error
	assert.False(t, errors.As(err, &ne), "the refused dial still unwraps to %T", ne)
}

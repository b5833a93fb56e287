package localtier

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// This file keeps the tier coherent: one connection per node (Follow
// lists them), in RESP2, subscribed to __redis__:invalidate, with CLIENT
// TRACKING ON REDIRECT <itself> BCAST PREFIX <prefix>. Redis then sends it
// the name of every key under the prefix that changes on that node
// (written, deleted, expired, evicted, flushed; on a replica, as the
// replication stream changes it), whichever client changed it. BCAST needs
// nothing of the connections that read, so reads stay on the caller's
// pool. The connection redirects to itself, so no redirect can break apart
// from it (no tracking-redir-broken).
//
// A node's tracker counts as up from the acknowledgement of its SUBSCRIBE
// until its connection fails: the connection's own Read or Close takes it
// down, before go-redis sees the error, so the tier is emptied and unused
// from the moment the socket reports the loss. A connection that dies
// silently is found by a PING unanswered for trackingPing. Each session
// dials once; a new session, not go-redis's reconnection, replaces it.
//
// The choice of BCAST and RESP2 is measured (bench/tracking_test.go,
// BENCHMARKS.md "Tracking modes").

const (
	trackingChannel = "__redis__:invalidate"
	// trackingPing is how often a quiet tracking connection is pinged; one
	// that has not answered by the next tick is taken for lost.
	trackingPing = 500 * time.Millisecond
	// trackingRetry is the pause between attempts to set tracking up again.
	trackingRetry = 100 * time.Millisecond
)

// ErrNoTracking reports a server that cannot track keys (miniredis, Redis
// before 6), or a client whose nodes cannot be followed: the tier stays
// off.
var ErrNoTracking = errors.New("the server does not support CLIENT TRACKING")

// errTrackingRedial refuses go-redis's own redial of a tracking session.
var errTrackingRedial = errors.New("redisservice: tracking connection lost")

// tracker is the tracking of one node. It counts in Tier.down while it is
// not up.
type tracker struct {
	lt      *Tier
	addr    string
	up      atomic.Bool // mirrors live, for Ticket
	mayDial atomic.Bool // the session has not dialled yet

	mu   sync.Mutex    // guards conn, live and done
	conn *trackingConn // the session's connection
	live bool          // up: subscribed on conn, which has not failed
	done bool          // stopped: its count is gone
}

func newTracker(lt *Tier, addr string) *tracker {
	lt.down.Add(1) // until subscribed
	return &tracker{lt: lt, addr: addr}
}

// subscribed marks t up, unless its connection has failed meanwhile.
func (t *tracker) subscribed() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.live || t.done || t.conn == nil || t.conn.lost {
		return
	}
	t.live = true
	t.lt.setUp()
	t.up.Store(true)
}

// lost marks t down when c is the connection it is up on.
func (t *tracker) lost(c *trackingConn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c.lost = true
	if t.live && t.conn == c {
		t.live = false
		t.up.Store(false)
		t.lt.setDown()
	}
}

// stop takes t off the count for good, emptying the tier if it was up.
func (t *tracker) stop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done {
		return
	}
	t.done = true
	t.up.Store(false)
	if t.live {
		t.live = false
		t.lt.clear()
		return
	}
	t.lt.down.Add(-1)
}

// dialer wraps dial: one dial per session, its connection watched.
func (t *tracker) dialer(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if !t.mayDial.CompareAndSwap(true, false) {
			return nil, errTrackingRedial
		}
		cn, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		c := &trackingConn{Conn: cn, t: t}
		t.mu.Lock()
		t.conn = c
		t.mu.Unlock()
		return c, nil
	}
}

// trackingConn is a tracking connection that takes its tracker down the
// moment a read from it fails or it is closed.
type trackingConn struct {
	net.Conn
	t    *tracker
	lost bool // guarded by t.mu
}

func (c *trackingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil && !isNetTimeout(err) {
		c.t.lost(c)
	}
	return n, err
}

func (c *trackingConn) Close() error {
	c.t.lost(c)
	return c.Conn.Close()
}

func isNetTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// options returns the options of t's client: a copy of base, which must
// be the owner's own (never a live client's: go-redis writes to those),
// with one connection, RESP2, tracking set up on connect.
func (t *tracker) options(base *redis.Options) *redis.Options {
	o := *base
	o.Protocol = 2 // invalidations as Pub/Sub messages on this connection
	o.PoolSize, o.MinIdleConns, o.MaxIdleConns, o.MaxActiveConns = 1, 0, 1, 0
	o.MaxRetries, o.DialerRetries = -1, 1
	o.ConnMaxLifetime, o.ConnMaxLifetimeJitter = 0, 0
	o.ClientSideCacheConfig, o.ClientSideCache = nil, nil
	o.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	o.AutoPipelineOptions, o.PushNotificationProcessor, o.Limiter = nil, nil, nil
	if o.ClientName == "" {
		o.ClientName = "redisservice"
	}
	o.ClientName += "-tracking"
	dial := o.Dialer
	if dial == nil {
		dial = redis.NewDialer(&o)
	}
	o.Dialer = t.dialer(dial)
	prefix := t.lt.prefix
	o.OnConnect = func(ctx context.Context, cn *redis.Conn) error {
		id, err := cn.ClientID(ctx).Result()
		if err == nil {
			args := []any{"CLIENT", "TRACKING", "on", "REDIRECT", id, "BCAST"}
			if prefix != "" {
				args = append(args, "PREFIX", prefix)
			}
			err = cn.Do(ctx, args...).Err()
		}
		var rerr redis.Error
		if errors.As(err, &rerr) { // Redis answered, but no
			return fmt.Errorf("%w: %w", ErrNoTracking, err)
		}
		return err
	}
	return &o
}

// run keeps t's node tracked until ctx ends, a session at a time. The
// tier is unused whenever t is not up.
func (t *tracker) run(ctx context.Context, base *redis.Options) {
	c := redis.NewClient(t.options(base))
	defer func() {
		_ = c.Close()
		t.stop()
	}()
	for ctx.Err() == nil {
		t.mayDial.Store(true)
		ps := c.Subscribe(ctx) // no channel yet: no round trip
		stop := context.AfterFunc(ctx, func() { _ = ps.Close() })
		err := ps.Subscribe(ctx, trackingChannel)
		if err == nil {
			err = t.receive(ctx, ps)
		}
		stop()
		_ = ps.Close() // takes t down, if it was up
		if errors.Is(err, ErrNoTracking) {
			t.lt.Off(err)
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(trackingRetry):
		}
	}
}

// receive applies the invalidations arriving on ps until it fails.
func (t *tracker) receive(ctx context.Context, ps *redis.PubSub) error {
	lt := t.lt
	pinged := false // a PING is unanswered
	for {
		msg, err := ps.ReceiveTimeout(ctx, trackingPing)
		if err != nil {
			if isNetTimeout(err) && !pinged {
				pinged = true
				if err := ps.Ping(ctx); err == nil {
					continue
				}
			}
			// A null invalidation (FLUSHALL, FLUSHDB) also lands here, as a
			// payload go-redis cannot parse: emptying the tier is its meaning.
			return err
		}
		pinged = false
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" {
				t.subscribed()
			}
		case *redis.Message:
			if len(m.PayloadSlice) == 0 && m.Payload == "" {
				lt.clear()
			}
			for _, k := range m.PayloadSlice {
				lt.invalidateKey(k)
			}
			if m.Payload != "" {
				lt.invalidateKey(m.Payload)
			}
		}
	}
}

// invalidateKey drops the copies of the Redis key k.
func (lt *Tier) invalidateKey(k string) {
	if name, ok := strings.CutPrefix(k, lt.prefix); ok {
		lt.Invalidate(name)
	}
}

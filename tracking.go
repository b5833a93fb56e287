package redisservice

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// This file keeps the local tier of Cache coherent: one connection per
// master, in RESP2, subscribed to __redis__:invalidate, with
// CLIENT TRACKING ON REDIRECT <itself> BCAST PREFIX <KeyPrefix>. Redis then
// sends it the name of every key under the prefix that changes (written,
// deleted, expired, evicted, flushed) on that master, whichever client
// changed it. BCAST needs nothing of the connections that read, so reads
// stay on the ordinary pool (also a caller's own Options.Client), and a
// reconnect needs only this one connection set up again.
//
// The choice is measured (bench/tracking_test.go, BENCHMARKS.md "Tracking
// modes"): BCAST and default-mode redirects deliver an invalidation alike
// (p50 ~40 µs, p99 110–155 µs on loopback); RESP3 pushes on the reading
// connection arrive only when go-redis next uses it (p99 2 ms busy,
// unbounded idle), which a local hit never does. The server pays about the
// same per message in both modes (3–3.5 µs), and BCAST batches the keys of
// a burst of writes into one message. The cost: every Service with the
// tier receives every write under KeyPrefix, about one message per write
// per Service, where default mode would send only the keys it holds.

const (
	trackingChannel = "__redis__:invalidate"
	// trackingPing is how often a quiet tracking connection is pinged; one
	// that has not answered by the next tick is taken for lost.
	trackingPing = 500 * time.Millisecond
	// trackingRetry is the pause between attempts to set tracking up again.
	trackingRetry = 100 * time.Millisecond
	// trackingRediscover is how often the masters of a cluster are listed
	// again, to track new ones.
	trackingRediscover = time.Second
)

// errNoTracking reports a server that cannot track keys (miniredis, Redis
// before 6): the local tier stays off.
var errNoTracking = errors.New("the server does not support CLIENT TRACKING")

// track finds the masters and keeps a tracker for each: on a cluster it
// looks again every trackingRediscover, starts trackers for new masters
// (the tier is unused until they are subscribed) and stops those of
// masters that went. It runs in the background from New until Close.
func (s *Service) track(ctx context.Context) {
	lt := s.local
	trackers := make(map[string]context.CancelFunc) // by address
	found := false
	for {
		masters, err := s.masterOptions(ctx)
		if errors.Is(err, errNoTracking) {
			s.localOff(err)
			return
		}
		if err == nil {
			seen := make(map[string]bool, len(masters))
			for _, o := range masters {
				seen[o.Addr] = true
				if _, ok := trackers[o.Addr]; ok {
					continue
				}
				lt.down.Add(1) // until this tracker is subscribed
				tctx, cancel := context.WithCancel(ctx)
				if !s.goBackground(func(context.Context) { s.trackMaster(tctx, o) }) {
					cancel()
					return
				}
				trackers[o.Addr] = cancel
			}
			for addr, cancel := range trackers {
				if !seen[addr] {
					cancel()
					delete(trackers, addr)
				}
			}
			if !found {
				found = true
				lt.down.Add(-1) // the masters are known
			}
			if !s.cluster {
				<-ctx.Done() // one node: nothing to look for again
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(trackingRediscover):
		}
	}
}

// masterOptions returns the connection options of every master.
func (s *Service) masterOptions(ctx context.Context) ([]*redis.Options, error) {
	switch c := s.rdb.(type) {
	case *redis.Client:
		return []*redis.Options{c.Options()}, nil
	case *redis.ClusterClient:
		var mu sync.Mutex
		var opts []*redis.Options
		err := c.ForEachMaster(ctx, func(_ context.Context, n *redis.Client) error {
			mu.Lock()
			opts = append(opts, n.Options())
			mu.Unlock()
			return nil
		})
		return opts, err
	default:
		return nil, fmt.Errorf("%w: client type %T", errNoTracking, s.rdb)
	}
}

// trackMaster keeps one tracking connection to the master that base
// dials, until ctx ends. The local tier is unused whenever it is not
// subscribed. It counts in localTier.down from its start (track added it)
// until it is subscribed, and again from any failure; on its way out it
// takes itself off the count and empties the tier.
func (s *Service) trackMaster(ctx context.Context, base *redis.Options) {
	lt := s.local
	defer func() {
		lt.clear()
		lt.down.Add(-1)
	}()
	o := *base
	o.Protocol = 2 // invalidations as Pub/Sub messages on this connection
	o.PoolSize, o.MinIdleConns, o.MaxIdleConns = 1, 0, 1
	o.MaxRetries = -1
	o.ClientSideCacheConfig = nil
	o.OnConnect = func(ctx context.Context, cn *redis.Conn) error {
		// Every (re)connection: tracking is per connection.
		id, err := cn.ClientID(ctx).Result()
		if err == nil {
			args := []any{"CLIENT", "TRACKING", "on", "REDIRECT", id, "BCAST"}
			if s.prefix != "" {
				args = append(args, "PREFIX", s.prefix)
			}
			err = cn.Do(ctx, args...).Err()
		}
		var rerr redis.Error
		if errors.As(err, &rerr) { // Redis answered, but no
			return fmt.Errorf("%w: %w", errNoTracking, err)
		}
		return err
	}
	c := redis.NewClient(&o)
	defer c.Close()
	for ctx.Err() == nil {
		ps := c.Subscribe(ctx, trackingChannel)
		stop := context.AfterFunc(ctx, func() { _ = ps.Close() })
		up, err := s.receiveInvalidations(ctx, ps)
		stop()
		_ = ps.Close()
		if up {
			lt.setDown()
		}
		if errors.Is(err, errNoTracking) {
			s.localOff(err)
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(trackingRetry):
		}
	}
}

// receiveInvalidations applies the invalidations arriving on ps until it
// fails. It reports whether it had marked its tracker up.
func (s *Service) receiveInvalidations(ctx context.Context, ps *redis.PubSub) (up bool, err error) {
	lt := s.local
	pinged := false // a PING is unanswered
	for {
		msg, err := ps.ReceiveTimeout(ctx, trackingPing)
		if err != nil {
			var nerr net.Error
			if errors.As(err, &nerr) && nerr.Timeout() && up && !pinged {
				pinged = true
				if err := ps.Ping(ctx); err == nil {
					continue
				}
			}
			// A null invalidation (FLUSHALL, FLUSHDB) also lands here, as a
			// payload go-redis cannot parse: emptying the tier is its meaning.
			return up, err
		}
		pinged = false
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" && !up {
				up = true
				lt.setUp()
			}
		case *redis.Message:
			if len(m.PayloadSlice) == 0 && m.Payload == "" {
				lt.clear()
			}
			for _, k := range m.PayloadSlice {
				s.invalidateLocal(k)
			}
			if m.Payload != "" {
				s.invalidateLocal(m.Payload)
			}
		}
	}
}

// invalidateLocal drops the copies of the Redis key k.
func (s *Service) invalidateLocal(k string) {
	if key, ok := strings.CutPrefix(k, s.prefix); ok {
		s.local.invalidate(key)
	}
}

// localOff switches the local tier off for good, saying why once.
func (s *Service) localOff(err error) {
	if s.local.off.Swap(true) {
		return
	}
	s.local.clear()
	s.log.Warn("redisservice: local cache tier off: Cache reads Redis on every call", "reason", err.Error())
}

// LocalCacheActive reports whether [Cache]'s local tier is in use now:
// [Options.LocalCacheEntries] is set, the server tracks keys, and the
// invalidations of every master arrive. It is false for a short while
// after [New] and while a tracking connection reconnects.
func (s *Service) LocalCacheActive() bool { return s.local != nil && s.local.usable() }

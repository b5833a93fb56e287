package localtier

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"
)

// trackingRediscover is how often the nodes are listed again.
const trackingRediscover = time.Second

// A Topology lists the nodes to track: every data node, replicas too,
// since a replica sends invalidations as its master's writes reach it and,
// once promoted, as it accepts writes itself.
type Topology struct {
	// List returns the options of each node, by address, and a fingerprint
	// of the roles and slots that changes when they do. The options must be
	// the caller's own copies, never a live client's: go-redis writes to
	// those. An error wrapping [ErrNoTracking] switches the tier off.
	List func(ctx context.Context) (nodes map[string]*redis.Options, fingerprint string, err error)
	// Rediscover lists the nodes again every second; false (one node) lists
	// them again only after a failed listing or [Tier.RaiseDoubt].
	Rediscover bool
}

// Follow keeps a tracker on every node that top lists, until ctx ends.
// start runs each tracker in the background with a ctx that ends when its
// owner closes, and reports false, running nothing, once the owner has
// begun to close; a tracker also ends with ctx. The tier is usable from
// the first listing of which every node is tracked, while each stays
// subscribed; a change of the fingerprint empties it. Follow blocks: run
// it once, in the background.
func (lt *Tier) Follow(ctx context.Context, top Topology, start func(func(context.Context)) bool) {
	trackers := make(map[string]context.CancelFunc) // by address
	var fingerprint string
	first := true
	for {
		started := time.Now()
		seq := lt.doubtSeq()
		nodes, fp, err := top.List(ctx)
		if errors.Is(err, ErrNoTracking) {
			lt.Off(err)
			return
		}
		if err == nil {
			if !first && fp != fingerprint {
				lt.clear() // roles or slots moved: start again from what Redis says now
			}
			first, fingerprint = false, fp
			if !lt.trackNodes(ctx, nodes, trackers, start) {
				return
			}
			lt.settleDoubt(seq)
		}
		var again <-chan time.Time // nil: a set that cannot change is listed again only when asked
		if top.Rediscover || err != nil {
			again = time.After(trackingRediscover)
		}
		select {
		case <-ctx.Done():
			return
		case <-again:
		case <-lt.nudge:
			// Redirections during a resharding come by the hundred: list
			// at most every trackingRetry.
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Until(started.Add(trackingRetry))):
			}
		}
	}
}

// trackNodes starts a tracker for each node of nodes not tracked yet, and
// stops those of nodes gone. It reports false once start refuses.
func (lt *Tier) trackNodes(ctx context.Context, nodes map[string]*redis.Options, trackers map[string]context.CancelFunc, start func(func(context.Context)) bool) bool {
	all := make(map[string]*tracker, len(nodes))
	for addr, t := range *lt.nodes.Load() {
		if _, ok := nodes[addr]; ok {
			all[addr] = t
		}
	}
	for addr, o := range nodes {
		if _, ok := trackers[addr]; ok {
			continue
		}
		t := newTracker(lt, addr)
		tctx, cancel := context.WithCancel(ctx)
		if !start(func(context.Context) { t.run(tctx, o) }) {
			cancel()
			t.stop()
			return false
		}
		trackers[addr], all[addr] = cancel, t
	}
	lt.nodes.Store(&all)
	for addr, cancel := range trackers {
		if _, ok := nodes[addr]; !ok {
			cancel() // its tracker empties the tier if it was up
			delete(trackers, addr)
		}
	}
	return true
}

package redisservice

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/vevurn/redisservice/internal/localtier"
)

// The nodes that the local tier tracks. The tier must hear of every write
// to a key it holds, wherever the write is accepted; so it tracks every
// data node, replicas too: a replica sends invalidations as its master's
// writes reach it, and once promoted (a graceful Sentinel or cluster
// failover, where the old master stays up) as it accepts writes itself, so
// a promotion within the tracked set loses nothing. The set comes from the
// sentinels (the master and every replica that some sentinel reports up)
// or from the cluster (every node serving slots), listed again every
// second ([localtier.Tier.Follow]); a change of the set or of the slots
// empties the tier.
//
// A node that joins is tracked from the first listing that names it. On a
// cluster a value is kept only when read from the slot's master, directly,
// with that master tracked (ticket): a MOVED or ASK reply, the sign of a
// node the listing may not know yet, empties the tier and keeps it unused
// until the nodes are listed again ([localtier.Tier.RaiseDoubt]).

// track keeps the local tier coherent with the nodes of s's client. It
// runs in the background from New until Close.
func (s *Service) track(ctx context.Context) {
	top, closeTop, err := s.topology()
	if err != nil {
		s.local.Off(err)
		return
	}
	defer closeTop()
	s.local.Follow(ctx, top, s.goBackground)
}

// LocalCacheActive reports whether [Cache]'s local tier is in use now:
// [Options.LocalCacheEntries] is set, the server tracks keys, and every
// node is tracked on a live connection. It is false for a short while
// after [New], while a tracking connection reconnects, and after a
// redirection until the nodes are listed again (README "Local tier").
func (s *Service) LocalCacheActive() bool { return s.local != nil && s.local.Usable() }

// topology returns how to list the nodes of s's client, and what to call
// when done listing them.
func (s *Service) topology() (localtier.Topology, func(), error) {
	switch c := s.rdb.(type) {
	case *redis.ClusterClient:
		return localtier.Topology{Rediscover: true, List: func(ctx context.Context) (map[string]*redis.Options, string, error) {
			return clusterNodes(ctx, c)
		}}, func() {}, nil
	case *redis.Client:
		if s.opts.SentinelMaster != "" {
			top, closeTop := s.sentinelTopology()
			return top, closeTop, nil
		}
		if s.nodeOpts == nil { // a failover client passed in Options.Client
			return localtier.Topology{}, nil, fmt.Errorf("%w: a failover client passed in Options.Client cannot be followed across a failover: use Options.SentinelMaster", localtier.ErrNoTracking)
		}
		nodes := map[string]*redis.Options{s.nodeOpts.Addr: s.nodeOpts}
		return localtier.Topology{List: func(context.Context) (map[string]*redis.Options, string, error) {
			return nodes, "", nil
		}}, func() {}, nil
	default:
		return localtier.Topology{}, nil, fmt.Errorf("%w: client type %T", localtier.ErrNoTracking, s.rdb)
	}
}

// clusterNodes lists the nodes that serve slots, and the slots.
func clusterNodes(ctx context.Context, c *redis.ClusterClient) (map[string]*redis.Options, string, error) {
	var mu sync.Mutex
	nodes := make(map[string]*redis.Options)
	err := c.ForEachShard(ctx, func(_ context.Context, n *redis.Client) error {
		// A shallow copy: the options of a live client, but only fields
		// that go-redis never writes after NewClient; the tracker
		// replaces the pointer to what it does write.
		o := *n.Options()
		mu.Lock()
		nodes[o.Addr] = &o
		mu.Unlock()
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	// CLUSTER SLOTS, not SHARDS: the tier works with Redis 6.
	reply, err := c.Do(ctx, "cluster", "slots").Slice()
	if err != nil {
		return nil, "", err
	}
	ranges := make([]string, 0, len(reply))
	for _, r := range reply {
		ranges = append(ranges, fmt.Sprint(r))
	}
	slices.Sort(ranges)
	fp := strings.Join(ranges, "\n")
	return nodes, fp, nil
}

// sentinelTopology lists the master and the replicas that the sentinels
// of Options.SentinelAddrs name: the union of what every sentinel that
// answers says, leaving out only a replica that every one of them reports
// down or disconnected (a sentinel never promotes those).
func (s *Service) sentinelTopology() (localtier.Topology, func()) {
	var sentinels []*redis.SentinelClient
	addrsOf := s.opts.SentinelAddrs
	for _, addr := range addrsOf {
		sentinels = append(sentinels, redis.NewSentinelClient(&redis.Options{
			Addr:                  addr,
			Username:              s.opts.SentinelUsername,
			Password:              s.opts.SentinelPassword,
			TLSConfig:             s.nodeOpts.TLSConfig,
			Dialer:                s.nodeOpts.Dialer,
			DialTimeout:           s.nodeOpts.DialTimeout,
			ReadTimeout:           s.opts.Timeout,
			WriteTimeout:          s.opts.Timeout,
			DialerRetries:         1,
			MaxRetries:            -1,
			PoolSize:              1,
			ContextTimeoutEnabled: true,
		}))
	}
	name := s.opts.SentinelMaster
	list := func(ctx context.Context) (map[string]*redis.Options, string, error) {
		addrs := make(map[string]bool)
		var masters []string
		var errs []error
		for i, sc := range sentinels {
			hp, err := sc.GetMasterAddrByName(ctx, name).Result()
			var replicas []map[string]string
			if err == nil && len(hp) != 2 {
				err = fmt.Errorf("master address %q", hp)
			}
			if err == nil {
				replicas, err = sc.Replicas(ctx, name).Result()
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("sentinel %s: %w", addrsOf[i], err))
				continue
			}
			master := hp[0] + ":" + hp[1]
			masters = append(masters, master)
			addrs[master] = true
			for _, r := range replicas {
				addr := r["ip"] + ":" + r["port"]
				flags := "," + r["flags"] + ","
				down := strings.Contains(flags, ",s_down,") || strings.Contains(flags, ",o_down,") || strings.Contains(flags, ",disconnected,")
				addrs[addr] = addrs[addr] || !down
			}
		}
		if len(masters) == 0 {
			return nil, "", errors.Join(errs...)
		}
		nodes := make(map[string]*redis.Options)
		var fp []string
		for addr, up := range addrs {
			if up {
				o := *s.nodeOpts
				o.Addr = addr
				nodes[addr] = &o
				fp = append(fp, addr)
			}
		}
		slices.Sort(fp)
		slices.Sort(masters)
		return nodes, strings.Join(slices.Compact(masters), " ") + " / " + strings.Join(fp, " "), nil
	}
	return localtier.Topology{Rediscover: true, List: list}, func() {
		for _, sc := range sentinels {
			_ = sc.Close()
		}
	}
}

// localTicket takes the tier's ticket for a read of key and, on a
// cluster, returns the client of the node to send it to: the slot's
// master, whose tracking the ticket checks.
func (s *Service) localTicket(ctx context.Context, key string) (localtier.Ticket, *redis.Client) {
	cc, ok := s.rdb.(*redis.ClusterClient)
	if !ok {
		return s.local.Ticket(key, ""), nil
	}
	n, err := cc.MasterForKey(ctx, s.key(key))
	if err != nil {
		return localtier.Ticket{}, nil
	}
	return s.local.Ticket(key, n.Options().Addr), n
}

// isRedirect reports whether err is a cluster's MOVED or ASK reply.
func isRedirect(err error) bool {
	msg := err.Error()
	return strings.HasPrefix(msg, "MOVED ") || strings.HasPrefix(msg, "ASK ")
}

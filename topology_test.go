package redisservice

// Fault tests of the local tier: events that make invalidations stop
// arriving, or come from a node the tier did not listen to. Each writes a
// new value from another client after the event and checks that Cache
// never returns the old value once the write has been acknowledged,
// allowing staleAllowance for the invalidation to travel. The tools: a
// graceful Sentinel failover and a graceful cluster failover (on the
// servers of scripts/redis-test-servers, left healthy), a slot moved to a
// master that joined after the Service started (a cluster of the test's
// own), and a killed tracking connection whose redial is slow.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// staleAllowance is how long after a write is acknowledged Cache may still
// return the value it replaced: the time an invalidation, or the news that
// invalidations stopped, takes to reach the tier. It is typically well under
// a millisecond on loopback; the bound leaves room for a loaded machine.
const staleAllowance = 250 * time.Millisecond

// watchAtLeast is how long a staleWatch calls Cache at the least: several
// times staleAllowance, so that a stale value outlasting it shows.
const watchAtLeast = 4 * staleAllowance

// errTierNoLoad is the loader of the fault tests: the key is always in
// Redis, and nothing may be stored in its place.
var errTierNoLoad = errors.New("the loader must not run")

// staleWatch calls Cache on one key again and again after a write of a new
// value, and counts the calls that returned the replaced value although
// they began more than staleAllowance after the write was acknowledged.
type staleWatch struct {
	s          *Service
	key        string
	old, fresh string
	acked      time.Time

	calls, errs, late int
	lastOld           time.Duration // the latest start, after acked, of a call that returned old
	firstFresh        time.Duration // the first return of fresh, after acked
}

func newStaleWatch(s *Service, key, old, fresh string, acked time.Time) *staleWatch {
	return &staleWatch{s: s, key: key, old: old, fresh: fresh, acked: acked, lastOld: -1, firstFresh: -1}
}

func (w *staleWatch) call() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	v, err := Cache(ctx, w.s, w.key, time.Minute, func(context.Context) (string, error) { return "", errTierNoLoad })
	w.calls++
	if err != nil {
		w.errs++ // Redis could not answer (a failover): not a stale read
		return
	}
	since := start.Sub(w.acked)
	switch v {
	case w.old:
		w.lastOld = max(w.lastOld, since)
		if since > staleAllowance {
			w.late++
		}
	case w.fresh:
		if w.firstFresh < 0 {
			w.firstFresh = time.Since(w.acked)
		}
	}
}

// until calls Cache until done holds (asked at most every 50 ms) and
// watchAtLeast has passed since the write, then 50 times more; it fails
// the test when done does not hold within d.
func (w *staleWatch) until(t testing.TB, d time.Duration, what string, done func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	var next time.Time
	for {
		w.call()
		if now := time.Now(); now.After(next) {
			if now.Sub(w.acked) > watchAtLeast && done() {
				break
			}
			next = now.Add(50 * time.Millisecond)
		}
		if !assert.False(t, time.Now().After(deadline), "%s: not within %v", what, d) {
			break
		}
		time.Sleep(time.Millisecond) // pacing only: a busy loop would starve the tracker on 2 cores
	}
	for range 50 {
		w.call()
	}
}

// check fails the test when a call returned the old value late, or no
// call returned the new one.
func (w *staleWatch) check(t testing.TB, what string) {
	t.Helper()
	t.Logf("%s: %d calls (%d failed); old value last returned by a call begun %v after the write; new value first returned %v after it",
		what, w.calls, w.errs, w.lastOld, w.firstFresh)
	assert.Zero(t, w.late, "%s: Cache(%q) returned the replaced value %q in %d calls begun more than %v after the write was acknowledged",
		what, w.key, w.old, w.late, staleAllowance)
	assert.GreaterOrEqual(t, w.firstFresh, time.Duration(0), "%s: Cache(%q) never returned the new value %q", what, w.key, w.fresh)
}

// killTracking kills, on every node of c, the subscribed connections whose
// client name begins with name (a Service's tracking connections), and
// returns how many it killed.
func killTracking(t testing.TB, ctx context.Context, c redis.UniversalClient, name string) int {
	t.Helper()
	var killed atomic.Int32
	kill := func(ctx context.Context, n *redis.Client) error {
		list, err := n.ClientList(ctx).Result()
		if err != nil {
			return err
		}
		for _, line := range strings.Split(list, "\n") {
			f := clientFields(line)
			if !strings.HasPrefix(f["name"], name) || f["sub"] == "0" || f["sub"] == "" {
				continue
			}
			if err := n.Do(ctx, "CLIENT", "KILL", "ID", f["id"]).Err(); err != nil {
				return err
			}
			killed.Add(1)
		}
		return nil
	}
	if cc, ok := c.(*redis.ClusterClient); ok {
		require.NoError(t, cc.ForEachShard(ctx, kill))
	} else {
		require.NoError(t, kill(ctx, c.(*redis.Client)))
	}
	return int(killed.Load())
}

// clientFields splits a line of CLIENT LIST into its fields.
func clientFields(line string) map[string]string {
	f := map[string]string{}
	for _, kv := range strings.Fields(line) {
		if k, v, ok := strings.Cut(kv, "="); ok {
			f[k] = v
		}
	}
	return f
}

// slowDialer dials TCP, first waiting delay when it is set.
type slowDialer struct {
	delay     atomic.Int64 // a time.Duration
	slowDials atomic.Int32 // dials made after a wait
}

func (d *slowDialer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if wait := time.Duration(d.delay.Load()); wait > 0 {
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		defer d.slowDials.Add(1)
	}
	var nd net.Dialer
	return nd.DialContext(ctx, network, addr)
}

// ownClient returns a client of the test's own for b's server or cluster,
// named name, dialling through dial. It is closed at cleanup.
func ownClient(t testing.TB, b *backend, name string, dial func(context.Context, string, string) (net.Conn, error)) redis.UniversalClient {
	t.Helper()
	var c redis.UniversalClient
	switch b.name {
	case "redis":
		o, err := redis.ParseURL(os.Getenv(envTestURL))
		require.NoError(t, err)
		o.ClientName, o.Dialer, o.ContextTimeoutEnabled = name, dial, true
		c = redis.NewClient(o)
	case "cluster":
		c = redis.NewClusterClient(&redis.ClusterOptions{
			Addrs:                 strings.Split(os.Getenv(envTestCluster), ","),
			ClientName:            name,
			Dialer:                dial,
			ContextTimeoutEnabled: true,
		})
	default:
		require.FailNow(t, fmt.Sprintf("no client of its own for %s", b.name))
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestLocalTierKilledTrackingSlowRedial(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		if !b.real() {
			t.Skip("miniredis has no CLIENT TRACKING")
		}
		const redial = 2 * time.Second
		var d slowDialer
		name := "rstest-" + randomHex(t, 4)
		s, err := New(Options{Client: ownClient(t, b, name, d.dial), KeyPrefix: b.prefix, LocalCacheEntries: 100})
		require.NoError(t, err)
		t.Cleanup(func() { _ = s.Close() })
		require.Eventually(t, s.LocalCacheActive, 10*time.Second, time.Millisecond, "the local tier comes into use")
		ctx := ctxT(t)
		for round := range 2 {
			key := "killed:" + strconv.Itoa(round)
			warmLocal(t, s, key, "before")
			// The Service's reads keep their pooled connections; only a
			// new connection, the tracking one's redial, waits.
			d.delay.Store(int64(redial))
			dials := d.slowDials.Load()
			// Another test may kill every connection of the server at any
			// time: then kill the redialled one.
			require.Eventually(t, func() bool { return killTracking(t, ctx, b.client, name) > 0 }, 10*redial, 10*time.Millisecond,
				"a tracking connection to kill")
			require.NoError(t, b.client.Set(ctx, b.raw(key), `"after"`, time.Minute).Err())
			w := newStaleWatch(s, key, "before", "after", time.Now())
			w.until(t, 10*redial, "a slow redial of the tracking connection, and the tier in use again", func() bool {
				return d.slowDials.Load() > dials && s.LocalCacheActive()
			})
			d.delay.Store(0)
			w.check(t, "killed tracking connection, round "+strconv.Itoa(round))
		}
	})
}

func TestLocalTierSentinelGracefulFailover(t *testing.T) {
	ss := sentinelSetOrSkip(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*recoveryBound)
	defer cancel()

	oldMaster := ss.waitHealthy(t)
	opts := ss.options(t, "")
	opts.Timeout, opts.LocalCacheEntries = failoverTimeout, 100
	s := newService(t, opts)
	require.Eventually(t, s.LocalCacheActive, 10*time.Second, time.Millisecond, "the local tier comes into use")
	warmLocal(t, s, "k", "before")

	sc := ss.client(t)
	require.NoError(t, sc.Failover(ctx, ss.name).Err())
	t.Cleanup(func() { ss.waitHealthy(t) }) // for the next test, whatever happens here
	var newMaster string
	require.Eventually(t, func() bool {
		newMaster = ss.namedMaster(ctx, sc)
		return newMaster != "" && newMaster != oldMaster
	}, recoveryBound, 10*time.Millisecond, "the sentinels name the replica master")
	t.Logf("SENTINEL FAILOVER: %s is master, %s stays up", newMaster, oldMaster)

	// The old master keeps its data and its clients until the sentinels
	// demote it, seconds later. Wait until the Service reads from the new
	// master (a key only the new master has), then write there.
	nc := redis.NewClient(&redis.Options{Addr: newMaster, Password: ss.masterPwd, ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = nc.Close() })
	require.NoError(t, nc.Set(ctx, s.Key("probe"), "new master", time.Minute).Err())
	require.Eventually(t, func() bool {
		v, found, err := s.Get(ctx, "probe")
		return err == nil && found && v == "new master"
	}, recoveryBound, 10*time.Millisecond, "the Service reads from the new master")
	require.NoError(t, nc.Set(ctx, s.Key("k"), `"after"`, time.Minute).Err())
	w := newStaleWatch(s, "k", "before", "after", time.Now())
	// The old master's demotion and resync come seconds later; the tier
	// must not serve the old value meanwhile, nor after.
	w.until(t, 3*recoveryBound, "the old master demoted and in sync, and the tier in use again", func() bool {
		var master string
		return ss.problem(&master) == "" && master == newMaster && s.LocalCacheActive()
	})
	w.check(t, "graceful Sentinel failover")
	warmLocal(t, s, "k", "after") // the tier in use after the failover
}

func TestLocalTierClusterGracefulFailover(t *testing.T) {
	addrs := clusterReplicasOrSkip(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*recoveryBound)
	defer cancel()
	newCluster := func() *redis.ClusterClient {
		cc := redis.NewClusterClient(replicatedClusterOptions(addrs))
		t.Cleanup(func() { _ = cc.Close() })
		return cc
	}
	cc := newCluster()
	waitClusterHealthy(t, cc)
	s := newService(t, Options{Client: cc, KeyPrefix: "rstest:" + randomHex(t, 6) + ":", Timeout: failoverTimeout, LocalCacheEntries: 100})
	require.Eventually(t, s.LocalCacheActive, 10*time.Second, time.Millisecond, "the local tier comes into use")
	warmLocal(t, s, "k", "before")

	master, err := cc.MasterForKey(ctx, s.Key("k"))
	require.NoError(t, err)
	rc := replicaOf(t, ctx, master)

	require.NoError(t, rc.Do(ctx, "CLUSTER", "FAILOVER").Err())
	t.Cleanup(func() { waitClusterHealthy(t, cc) })
	require.Eventually(t, func() bool { return isMaster(ctx, rc) }, recoveryBound, 10*time.Millisecond, "the replica takes over")
	t.Logf("CLUSTER FAILOVER: %s is master, %s stays up", rc.Options().Addr, master.Options().Addr)

	writer := newCluster()
	require.NoError(t, writer.Set(ctx, s.Key("k"), `"after"`, time.Minute).Err())
	w := newStaleWatch(s, "k", "before", "after", time.Now())
	w.until(t, 3*recoveryBound, "the cluster healthy, and the tier in use again", func() bool {
		return clusterProblem(writer) == "" && s.LocalCacheActive()
	})
	w.check(t, "graceful cluster failover")
	warmLocal(t, s, "k", "after") // the tier in use after the failover
}

// clusterNode starts a cluster-enabled redis-server of the test's own.
func clusterNode(t testing.TB) (*redisServer, *redis.Client) {
	t.Helper()
	srv := startRedisServer(t, "--cluster-enabled", "yes", "--cluster-node-timeout", "1000")
	c := redis.NewClient(&redis.Options{Addr: srv.addr(), ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = c.Close() })
	return srv, c
}

func TestLocalTierSlotMovedToNewMaster(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	// A cluster of one master owning every slot.
	srvA, a := clusterNode(t)
	require.NoError(t, a.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", 0, 16383).Err())
	require.Eventually(t, func() bool {
		return strings.Contains(a.ClusterInfo(ctx).Val(), "cluster_state:ok")
	}, 10*time.Second, 10*time.Millisecond, "the one-node cluster is ok")
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{srvA.addr()}, ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = cc.Close() })
	s, err := New(Options{Client: cc, KeyPrefix: "rstest:", LocalCacheEntries: 100})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	require.Eventually(t, s.LocalCacheActive, 10*time.Second, time.Millisecond, "the local tier comes into use")
	const key = "moved"
	full := s.Key(key)
	warmLocal(t, s, key, "v1")

	// A second master joins after the Service started.
	srvB, bc := clusterNode(t)
	require.NoError(t, a.ClusterMeet(ctx, "127.0.0.1", strconv.Itoa(srvB.port)).Err())
	idA, err := a.Do(ctx, "CLUSTER", "MYID").Text()
	require.NoError(t, err)
	idB, err := bc.Do(ctx, "CLUSTER", "MYID").Text()
	require.NoError(t, err)
	knows := func(c *redis.Client, id string) bool {
		nodes, err := c.ClusterNodes(ctx).Result()
		if err != nil {
			return false
		}
		for _, line := range strings.Split(nodes, "\n") {
			if strings.HasPrefix(line, id+" ") && !strings.Contains(line, "handshake") && strings.Contains(line, " connected") {
				return true
			}
		}
		return false
	}
	require.Eventually(t, func() bool {
		return knows(a, idB) && knows(bc, idA) && strings.Contains(bc.ClusterInfo(ctx).Val(), "cluster_state:ok")
	}, 10*time.Second, 10*time.Millisecond, "the masters know each other and the new one knows the slots")

	// Move the key's slot to it: while the slot migrates, the moved key is
	// read and written on the new master through ASK redirections.
	slot, err := a.ClusterKeySlot(ctx, full).Result()
	require.NoError(t, err)
	require.NoError(t, bc.Do(ctx, "CLUSTER", "SETSLOT", slot, "IMPORTING", idA).Err())
	require.NoError(t, a.Do(ctx, "CLUSTER", "SETSLOT", slot, "MIGRATING", idB).Err())
	require.NoError(t, a.Migrate(ctx, "127.0.0.1", strconv.Itoa(srvB.port), full, 0, 5*time.Second).Err())
	require.Eventually(t, func() bool { return !localHas[string](s, key) }, invalidationBound, time.Millisecond,
		"the old master's invalidation of the migrated key")
	assert.Equal(t, "v1", cachedAsOrErr(t, s, key), "Cache of the migrated key, through an ASK redirection")
	_, err = bc.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Do(ctx, "ASKING")
		p.Set(ctx, full, `"v2"`, time.Minute)
		return nil
	})
	require.NoError(t, err)
	w := newStaleWatch(s, key, "v1", "v2", time.Now())
	w.until(t, 10*time.Second, "a second and a half", func() bool { return time.Since(w.acked) > 1500*time.Millisecond })
	w.check(t, "written on the importing master during the migration")

	// The slot is the new master's.
	require.NoError(t, bc.Do(ctx, "CLUSTER", "SETSLOT", slot, "NODE", idB).Err())
	require.NoError(t, a.Do(ctx, "CLUSTER", "SETSLOT", slot, "NODE", idB).Err())
	assert.Equal(t, "v2", cachedAsOrErr(t, s, key), "Cache of the moved key, through a MOVED redirection")
	require.NoError(t, bc.Set(ctx, full, `"v3"`, time.Minute).Err())
	w = newStaleWatch(s, key, "v2", "v3", time.Now())
	w.until(t, 10*time.Second, "the tier in use again", s.LocalCacheActive)
	w.check(t, "written on the new master after the move")

	// Once the new master is tracked, its writes reach the tier.
	warmLocal(t, s, key, "v3")
	require.NoError(t, bc.Set(ctx, full, `"v4"`, time.Minute).Err())
	require.Eventually(t, func() bool { return cachedAsOrErr(t, s, key) == "v4" }, invalidationBound, time.Millisecond,
		"a write on the new master reaches the tier")
}

// cachedAsOrErr returns what Cache gives for key with a loader that fails,
// or the error's text.
func cachedAsOrErr(t testing.TB, s *Service, key string) string {
	t.Helper()
	v, err := Cache(ctxT(t), s, key, time.Minute, func(context.Context) (string, error) { return "", errTierNoLoad })
	if err != nil {
		return err.Error()
	}
	return v
}

func TestLocalTierTrackerOptionsRace(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "redis")
	// A fresh client's first connections finish their handshake while New
	// starts the tracker; go-redis writes to its options then (the
	// maintenance-notifications fallback on a server without them). Under
	// -race, a tracker that built its client from the live options races.
	for range 30 {
		o, err := redis.ParseURL(os.Getenv(envTestURL))
		require.NoError(t, err)
		o.ContextTimeoutEnabled = true
		c := redis.NewClient(o)
		s, err := New(Options{Client: c, KeyPrefix: b.prefix, LocalCacheEntries: 10})
		require.NoError(t, err)
		done := make(chan struct{})
		for g := range 4 {
			go func() {
				defer func() { done <- struct{}{} }()
				for i := range 5 {
					_, _ = s.Set(context.Background(), "race:"+strconv.Itoa(g*10+i), i, WithTTL(time.Minute))
				}
			}()
		}
		for range 4 {
			<-done
		}
		require.NoError(t, s.Close())
		require.NoError(t, c.Close())
	}
}

// TestLocalTierKilledTrackingSentinel: with SentinelMaster, a killed
// tracking connection of the master takes the tier out of use before a
// write made meanwhile could be missed, as on one node and a cluster.
// It kills connections only (none of the set's servers), so it leaves the
// set as it found it; it is not parallel, like the failover tests.
func TestLocalTierKilledTrackingSentinel(t *testing.T) {
	ss := sentinelSetOrSkip(t)
	master := ss.waitHealthy(t)
	cname := "rstest-" + randomHex(t, 4)
	opts := ss.options(t, "?client_name="+cname)
	opts.LocalCacheEntries = 100
	prefix := opts.KeyPrefix
	s := newService(t, opts)
	mc := redis.NewClient(&redis.Options{Addr: master, Password: ss.masterPwd, ContextTimeoutEnabled: true})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		assert.NoError(t, deleteByPrefix(ctx, mc, prefix), "cleanup of %s*", prefix)
		_ = mc.Close()
	})
	require.Eventually(t, s.LocalCacheActive, 10*time.Second, time.Millisecond, "the local tier comes into use")
	ctx := ctxT(t)
	for round := range 2 {
		key := "killed:" + strconv.Itoa(round)
		warmLocal(t, s, key, "before")
		require.Eventually(t, func() bool { return killTracking(t, ctx, mc, cname) > 0 }, 20*time.Second, 10*time.Millisecond,
			"a tracking connection on the master to kill")
		require.NoError(t, mc.Set(ctx, prefix+key, `"after"`, time.Minute).Err())
		w := newStaleWatch(s, key, "before", "after", time.Now())
		w.until(t, 20*time.Second, "the tier in use again after the kill", s.LocalCacheActive)
		w.check(t, "Sentinel: killed tracking connection, round "+strconv.Itoa(round))
	}
}

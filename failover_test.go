package redisservice

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The failover tests kill a master of a Sentinel setup and of a Redis
// Cluster with replicas under load, and measure how long callers see
// errors. They need the servers that scripts/redis-test-servers starts (it
// prints the variables below); .ci/run runs them. Each restarts the master
// it killed, which rejoins as a replica, so the servers serve the next run
// too. README.md "High availability" quotes the windows they log.
//
// They do not call t.Parallel: 16 goroutines calling a Service that fails
// fast keep a small machine busy, which would skew their windows and the
// timing of the fault tests that run in parallel.
const (
	envTestDir               = "REDIS_TEST_DIR"
	envTestSentinel          = "REDIS_TEST_SENTINEL"
	envTestSentinelMaster    = "REDIS_TEST_SENTINEL_MASTER"
	envTestSentinelPassword  = "REDIS_TEST_SENTINEL_PASSWORD"
	envTestSentinelMasterPwd = "REDIS_TEST_SENTINEL_MASTER_PASSWORD"
	envTestClusterReplicas   = "REDIS_TEST_CLUSTER_REPLICAS"
)

// failoverTimeout is the Service's Timeout in the failover tests; every
// call must return within callBound.
const (
	failoverTimeout = time.Second
	callBound       = 3 * failoverTimeout
	recoveryBound   = 30 * time.Second // kill to first success, generous on a loaded machine
	loadGoroutines  = 16
)

func TestSentinelFailover(t *testing.T) {
	ss := sentinelSetOrSkip(t)
	ctx := ctxT(t)

	oldMaster := ss.waitHealthy(t)
	mc := redis.NewClient(&redis.Options{Addr: oldMaster, Password: ss.masterPwd, ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = mc.Close() })
	victim := testServerOf(t, ctx, mc)

	logs := &syncWriter{w: new(bytes.Buffer)}
	opts := ss.options(t, "")
	opts.Timeout = failoverTimeout
	opts.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s := newService(t, opts)
	require.NoError(t, s.Connect(ctx))

	sc := ss.client(t)
	promoted := func(ctx context.Context) bool {
		m := ss.namedMaster(ctx, sc)
		return m != "" && m != oldMaster
	}

	load := startLoad(s, func(int) string { return "" }, func(int) bool { return true })
	time.Sleep(time.Second) // some calls on the healthy master first
	load.killAndWait(t, s, victim, promoted)
	r := load.stop()
	r.report(t, "Sentinel failover (master SIGKILLed)", "the sentinels named the replica master")

	r.requireRecovered(t)
	waitConnected(t, s)
	newMaster := ss.namedMaster(ctx, sc)
	require.NotEmpty(t, newMaster, "the sentinels name no master")
	assert.NotEqual(t, oldMaster, newMaster, "the sentinels still name the killed master")
	for _, e := range r.errors {
		assert.NotContains(t, e, ss.masterPwd, "an error holds the master's password")
		assert.NotContains(t, e, ss.password, "an error holds the sentinels' password")
	}
	assert.NotContains(t, logs.String(), ss.masterPwd, "the log holds the master's password")
	assert.NotContains(t, logs.String(), ss.password, "the log holds the sentinels' password")
}

func TestClusterReplicaFailover(t *testing.T) {
	addrs := clusterReplicasOrSkip(t)
	ctx := ctxT(t)
	// The settings New gives a client it dials (see redisservice.go).
	o := replicatedClusterOptions(addrs)
	o.PoolTimeout, o.DialerRetries = failoverTimeout, 1
	cc := redis.NewClusterClient(o)
	t.Cleanup(func() { _ = cc.Close() })
	waitClusterHealthy(t, cc)

	// Hash tags on the victim's slots, and on the other masters' slots.
	victimMaster, err := cc.MasterForKey(ctx, "{t0}")
	require.NoError(t, err)
	victimAddr := victimMaster.Options().Addr
	var victimTags, otherTags []string
	for i := 0; len(victimTags) < 4 || len(otherTags) < 4; i++ {
		tag := "{t" + strconv.Itoa(i) + "}"
		m, err := cc.MasterForKey(ctx, tag)
		require.NoError(t, err)
		if m.Options().Addr == victimAddr {
			victimTags = append(victimTags, tag)
		} else {
			otherTags = append(otherTags, tag)
		}
	}
	victim := testServerOf(t, ctx, victimMaster)
	rc := replicaOf(t, ctx, victimMaster)
	promoted := func(ctx context.Context) bool { return isMaster(ctx, rc) }

	s := newService(t, Options{Client: cc, KeyPrefix: "rstest:" + randomHex(t, 6) + ":", Timeout: failoverTimeout})
	require.NoError(t, s.Connect(ctx))

	// Even goroutines use keys on the victim's slots, odd ones the others'.
	onVictim := func(g int) bool { return g%2 == 0 }
	load := startLoad(s, func(g int) string {
		if onVictim(g) {
			return victimTags[g/2%len(victimTags)]
		}
		return otherTags[g/2%len(otherTags)]
	}, onVictim)
	time.Sleep(time.Second)
	load.killAndWait(t, s, victim, promoted)
	r := load.stop()
	r.report(t, "Cluster failover (master SIGKILLed), keys of its slots", "its replica took the master role")

	r.requireRecovered(t)
	waitConnected(t, s)
	m, err := cc.MasterForKey(ctx, victimTags[0])
	require.NoError(t, err)
	assert.NotEqual(t, victimAddr, m.Options().Addr, "the killed master still owns its slots")
}

// sentinelSet is the Sentinel setup that scripts/redis-test-servers
// starts, as the environment names it.
type sentinelSet struct {
	addrs     []string // the sentinels'
	name      string   // the master's name
	password  string   // the sentinels' password
	masterPwd string   // the data nodes' password
}

// sentinelSetOrSkip returns the Sentinel setup of the environment, and
// skips the test when there is none.
func sentinelSetOrSkip(t testing.TB) sentinelSet {
	t.Helper()
	addrs, name := os.Getenv(envTestSentinel), os.Getenv(envTestSentinelMaster)
	if addrs == "" || name == "" {
		t.Skipf("no Redis Sentinel: set %s and %s (scripts/redis-test-servers start prints them)", envTestSentinel, envTestSentinelMaster)
	}
	return sentinelSet{addrs: strings.Split(addrs, ","), name: name,
		password: os.Getenv(envTestSentinelPassword), masterPwd: os.Getenv(envTestSentinelMasterPwd)}
}

// options returns the Options of a Service on the set's master, with a
// key prefix of its own; query is appended to the URL ("?client_name=…").
func (ss sentinelSet) options(t testing.TB, query string) Options {
	t.Helper()
	return Options{
		URL:              "redis://:" + ss.masterPwd + "@unused-with-sentinel/0" + query,
		SentinelMaster:   ss.name,
		SentinelAddrs:    ss.addrs,
		SentinelPassword: ss.password,
		KeyPrefix:        "rstest:" + randomHex(t, 6) + ":",
	}
}

// client returns a client of the first sentinel, closed at cleanup.
func (ss sentinelSet) client(t testing.TB) *redis.SentinelClient {
	t.Helper()
	sc := redis.NewSentinelClient(&redis.Options{Addr: ss.addrs[0], Password: ss.password, ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = sc.Close() })
	return sc
}

// namedMaster returns the master's address as sc names it, or "" when
// it cannot tell.
func (ss sentinelSet) namedMaster(ctx context.Context, sc *redis.SentinelClient) string {
	hp, err := sc.GetMasterAddrByName(ctx, ss.name).Result()
	if err != nil || len(hp) != 2 {
		return ""
	}
	return hp[0] + ":" + hp[1]
}

// clusterReplicasOrSkip returns the addresses of the cluster with
// replicas that scripts/redis-test-servers starts, and skips the test
// when the environment names none.
func clusterReplicasOrSkip(t testing.TB) []string {
	t.Helper()
	addrs := os.Getenv(envTestClusterReplicas)
	if addrs == "" {
		t.Skipf("no Redis Cluster with replicas: set %s (scripts/redis-test-servers start prints it)", envTestClusterReplicas)
	}
	return strings.Split(addrs, ",")
}

// replicatedClusterOptions are the options of a client of the cluster
// with replicas at addrs, its timeouts failoverTimeout.
func replicatedClusterOptions(addrs []string) *redis.ClusterOptions {
	return &redis.ClusterOptions{
		Addrs:                 addrs,
		DialTimeout:           failoverTimeout,
		ReadTimeout:           failoverTimeout,
		WriteTimeout:          failoverTimeout,
		ContextTimeoutEnabled: true,
	}
}

// replicaOf returns a client of the one replica of the cluster master m,
// closed at cleanup.
func replicaOf(t testing.TB, ctx context.Context, m *redis.Client) *redis.Client {
	t.Helper()
	id, err := m.Do(ctx, "CLUSTER", "MYID").Text()
	require.NoError(t, err)
	replicas, err := m.Do(ctx, "CLUSTER", "REPLICAS", id).StringSlice()
	require.NoError(t, err)
	require.Len(t, replicas, 1, "replicas of the master %s", m.Options().Addr)
	addr, _, _ := strings.Cut(strings.Fields(replicas[0])[1], "@")
	rc := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = rc.Close() })
	return rc
}

// isMaster reports whether c says it has the master role.
func isMaster(ctx context.Context, c *redis.Client) bool {
	info, err := c.Info(ctx, "replication").Result()
	return err == nil && strings.Contains(info, "role:master")
}

// testServer is a redis-server that scripts/redis-test-servers started:
// the tests kill it by pid and start it again from its config file.
type testServer struct {
	addr string
	pid  int
	conf string
}

// testServerOf finds the process behind c, and fails unless it is a
// redis-server whose config file lies in $REDIS_TEST_DIR: the tests never
// kill a server they did not start.
func testServerOf(t testing.TB, ctx context.Context, c *redis.Client) testServer {
	t.Helper()
	dir := os.Getenv(envTestDir)
	require.NotEmpty(t, dir, "%s must name the directory of scripts/redis-test-servers, to restart what a test kills", envTestDir)
	info, err := c.Info(ctx, "server").Result()
	require.NoError(t, err)
	srv := testServer{addr: c.Options().Addr}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "process_id:"); ok {
			srv.pid, _ = strconv.Atoi(v)
		}
		if v, ok := strings.CutPrefix(line, "config_file:"); ok {
			srv.conf = v
		}
	}
	rel, err := filepath.Rel(dir, srv.conf)
	require.True(t, err == nil && !strings.HasPrefix(rel, ".."), "%s runs from %q, not from %s", srv.addr, srv.conf, dir)
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(srv.pid) + "/cmdline")
	require.NoError(t, err)
	_, port, _ := strings.Cut(srv.addr, ":")
	require.True(t, bytes.Contains(cmdline, []byte("redis-server")) && bytes.Contains(cmdline, []byte(":"+port)),
		"pid %d is %q, not the redis-server on %s", srv.pid, cmdline, srv.addr)
	return srv
}

// kill stops the server at once (SIGKILL), as a crash would.
func (r testServer) kill(t testing.TB) {
	t.Helper()
	p, err := os.FindProcess(r.pid)
	require.NoError(t, err)
	require.NoError(t, p.Kill())
	t.Logf("killed the master %s (pid %d)", r.addr, r.pid)
}

// restart starts the server again from its config file; it rejoins as a
// replica of the master promoted meanwhile.
func (r testServer) restart(t testing.TB) {
	t.Helper()
	out, err := exec.Command("redis-server", r.conf).CombinedOutput()
	assert.NoError(t, err, "restarting %s from %s: %v\n%s", r.addr, r.conf, err, out)
}

// waitHealthy waits until every sentinel names the same master, knows
// the two others, and sees a replica in sync that could take over; a
// previous run's restarted master may still be catching up. It returns
// the master's address.
func (ss sentinelSet) waitHealthy(t testing.TB) string {
	t.Helper()
	var why string
	deadline := time.Now().Add(recoveryBound)
	for time.Now().Before(deadline) {
		var master string
		why = ss.problem(&master)
		if why == "" {
			return master
		}
		time.Sleep(100 * time.Millisecond)
	}
	require.FailNow(t, fmt.Sprintf("the Sentinel setup is not healthy after %v: %s", recoveryBound, why))
	return ""
}

// problem says what keeps the Sentinel setup from being ready to fail
// over, or "" when it is ready, with its master in *master.
func (ss sentinelSet) problem(master *string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, addr := range ss.addrs {
		sc := redis.NewSentinelClient(&redis.Options{Addr: addr, Password: ss.password, ContextTimeoutEnabled: true})
		defer sc.Close()
		m, err := sc.Master(ctx, ss.name).Result()
		switch {
		case err != nil:
			return fmt.Sprintf("sentinel %s: %v", addr, err)
		case m["flags"] != "master" || m["num-other-sentinels"] != "2" || m["failover-state"] != "" && m["failover-state"] != "none":
			return fmt.Sprintf("sentinel %s: master flags %q, other sentinels %s", addr, m["flags"], m["num-other-sentinels"])
		}
		got := m["ip"] + ":" + m["port"]
		if *master != "" && *master != got {
			return fmt.Sprintf("sentinels disagree on the master: %s, %s", *master, got)
		}
		*master = got
		replicas, err := sc.Replicas(ctx, ss.name).Result()
		if err != nil {
			return fmt.Sprintf("sentinel %s: %v", addr, err)
		}
		if !slices.ContainsFunc(replicas, func(r map[string]string) bool {
			return r["flags"] == "slave" && r["master-link-status"] == "ok"
		}) {
			return fmt.Sprintf("sentinel %s: no replica in sync: %v", addr, replicas)
		}
	}
	return ""
}

// waitClusterHealthy waits until the cluster has three masters with a
// replica in sync each, and cc knows them.
func waitClusterHealthy(t testing.TB, cc *redis.ClusterClient) {
	t.Helper()
	var why string
	deadline := time.Now().Add(recoveryBound)
	for time.Now().Before(deadline) {
		why = clusterProblem(cc)
		if why == "" {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	require.FailNow(t, fmt.Sprintf("the cluster is not healthy after %v: %s", recoveryBound, why))
}

// clusterProblem says what keeps the cluster from being ready to fail a
// master over, or "" when it is ready.
func clusterProblem(cc *redis.ClusterClient) string {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	cc.ReloadState(ctx)
	var masters atomic.Int32
	err := cc.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
		masters.Add(1)
		info, err := n.Info(ctx, "replication").Result()
		if err != nil {
			return err
		}
		if !strings.Contains(info, "connected_slaves:1") || !strings.Contains(info, "state=online") {
			return fmt.Errorf("master %s has no replica online", n.Options().Addr)
		}
		return nil
	})
	if err != nil {
		return err.Error()
	}
	err = cc.ForEachShard(ctx, func(ctx context.Context, n *redis.Client) error {
		if info := n.ClusterInfo(ctx).Val(); !strings.Contains(info, "cluster_state:ok") {
			return fmt.Errorf("node %s: cluster state not ok", n.Options().Addr)
		}
		return nil
	})
	if err != nil {
		return err.Error()
	}
	if n := masters.Load(); n != 3 {
		return fmt.Sprintf("%d masters, want 3", n)
	}
	return ""
}

// waitConnected fails unless s.IsConnected turns true within
// waitDeadline: it must recover by itself after a failover.
func waitConnected(t testing.TB, s *Service) {
	t.Helper()
	deadline := time.Now().Add(waitDeadline)
	for !s.IsConnected() {
		require.False(t, time.Now().After(deadline), "IsConnected still false %v after calls succeed again", waitDeadline)
		time.Sleep(10 * time.Millisecond)
	}
}

// outcome is one call of the load.
type outcome struct {
	end      time.Time
	took     time.Duration
	failed   bool
	measured bool // counts for the outage window
}

// load runs loadGoroutines goroutines of mixed calls on a Service and
// records every call, to measure what a failover costs callers.
type load struct {
	killed   atomic.Int64 // unix nanos of the kill; 0 before
	firstBad atomic.Int64 // unix nanos of the first measured failure after the kill
	firstOK  atomic.Int64 // unix nanos of the first measured success after firstBad
	measured func(g int) bool
	sawDown  atomic.Bool // IsConnected was false after the kill
	promoted time.Time   // when the failover was seen done on the server side; killAndWait's own

	done    chan struct{}
	wg      sync.WaitGroup
	results [][]outcome // per goroutine

	mu          sync.Mutex // guards errors and otherErrors
	errors      map[string]bool
	otherErrors map[string]bool // of unmeasured calls
}

// startLoad starts the goroutines: goroutine g works on keys with
// tag(g) in them (a cluster hash tag, or ""), and its calls count for the
// outage window when measured(g).
func startLoad(s *Service, tag func(g int) string, measured func(g int) bool) *load {
	l := &load{measured: measured, done: make(chan struct{}), results: make([][]outcome, loadGoroutines), errors: map[string]bool{}, otherErrors: map[string]bool{}}
	for g := range loadGoroutines {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.run(s, g, tag(g))
		}()
	}
	return l
}

// run is goroutine g: one call per turn, cycling through the kinds of
// call, with a millisecond between calls, as a busy application server
// would rather than a benchmark.
func (l *load) run(s *Service, g int, tag string) {
	ctx := context.Background()
	load := func(context.Context) (string, error) { return "loaded", nil }
	type doc struct{ N int }
	for i := 0; ; i++ {
		select {
		case <-l.done:
			return
		default:
		}
		key := fmt.Sprintf("ha:%s:%d:%d", tag, g, i%20)
		start := time.Now()
		var err error
		switch i % 8 {
		case 0:
			_, err = s.Set(ctx, key, i, WithTTL(time.Minute))
		case 1:
			_, _, err = s.Get(ctx, key)
		case 2:
			_, err = s.SetJSON(ctx, key+":json", doc{i}, WithTTL(time.Minute))
		case 3:
			var d doc
			_, err = s.GetJSON(ctx, key+":json", &d)
		case 4:
			err = s.HSet(ctx, key+":hash", "f", i)
		case 5:
			_, err = s.HGetAll(ctx, key+":hash")
		case 6:
			_, err = s.CheckRateLimit(ctx, fmt.Sprintf("ha:%s:%d", tag, g), time.Minute, 1<<30)
		case 7:
			_, err = Cache(ctx, s, key+":cache", time.Minute, load)
		}
		l.record(g, start, err)
		time.Sleep(time.Millisecond)
	}
}

func (l *load) record(g int, start time.Time, err error) {
	end := time.Now()
	o := outcome{end: end, took: end.Sub(start), failed: err != nil, measured: l.measured(g)}
	l.results[g] = append(l.results[g], o)
	if err != nil {
		l.mu.Lock()
		if len(l.errors) < 1000 {
			l.errors[err.Error()] = true
		}
		if !o.measured && len(l.otherErrors) < 1000 {
			l.otherErrors[err.Error()] = true
		}
		l.mu.Unlock()
	}
	if !o.measured || l.killed.Load() == 0 {
		return
	}
	// A success counts only for a call begun after the first failure:
	// one begun before may carry a reply sent before the kill.
	if o.failed {
		l.firstBad.CompareAndSwap(0, end.UnixNano())
	} else if bad := l.firstBad.Load(); bad != 0 && start.UnixNano() > bad {
		l.firstOK.CompareAndSwap(0, end.UnixNano())
	}
}

// killAndWait kills victim (and starts it again at cleanup), waits until a
// measured call begun after one failed succeeds and promoted reports the
// failover done on the server side (or recoveryBound passes), then lets the
// load run 3s more. Meanwhile it watches s.IsConnected, which must turn
// false.
func (l *load) killAndWait(t testing.TB, s *Service, victim testServer, promoted func(context.Context) bool) {
	t.Helper()
	l.killed.Store(time.Now().UnixNano())
	victim.kill(t)
	t.Cleanup(func() { victim.restart(t) })
	deadline := time.Now().Add(recoveryBound)
	for (l.firstOK.Load() == 0 || l.promoted.IsZero()) && time.Now().Before(deadline) {
		if !s.IsConnected() {
			l.sawDown.Store(true)
		}
		if l.promoted.IsZero() {
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			if promoted(ctx) {
				l.promoted = time.Now()
			}
			cancel()
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(3 * time.Second)
}

// stop ends the load and sums it up.
func (l *load) stop() loadResult {
	close(l.done)
	l.wg.Wait()
	r := loadResult{killed: time.Unix(0, l.killed.Load()), promoted: l.promoted, sawDown: l.sawDown.Load(),
		errors: slices.Sorted(maps.Keys(l.errors)), otherErrors: slices.Sorted(maps.Keys(l.otherErrors))}
	var last time.Time
	for _, rs := range l.results {
		for _, o := range rs {
			r.calls++
			r.slowest = max(r.slowest, o.took)
			last = later(last, o.end)
			switch {
			case !o.failed:
			case o.end.Before(r.killed):
				r.failedBeforeKill++
			case o.measured:
				r.failed++
				r.lastBad = later(r.lastBad, o.end)
			default:
				r.failedOther++
			}
		}
	}
	if bad, ok := l.firstBad.Load(), l.firstOK.Load(); bad != 0 {
		r.firstBad = time.Unix(0, bad)
		if ok != 0 {
			r.firstOK = time.Unix(0, ok)
		}
	}
	// The last 2s of the load, well after recovery: nothing may fail.
	tail := last.Add(-2 * time.Second)
	for _, rs := range l.results {
		for _, o := range rs {
			if o.failed && o.end.After(tail) {
				r.failedAtEnd++
			}
			if !o.measured && !o.failed && o.end.After(r.firstBad) && o.end.Before(r.firstOK) {
				r.otherOKInWindow++
			}
		}
	}
	return r
}

// loadResult sums up a load run around a kill.
type loadResult struct {
	killed, firstBad, firstOK, lastBad time.Time
	promoted                           time.Time // zero when not seen
	calls, failed, failedOther         int
	failedBeforeKill, failedAtEnd      int
	otherOKInWindow                    int // unmeasured calls that succeeded during the window
	sawDown                            bool
	slowest                            time.Duration
	errors                             []string // distinct error texts, up to 1000
	otherErrors                        []string // those of unmeasured calls
}

// window is the outage a caller saw: from the first failure to the first
// success of a call begun after it.
func (r loadResult) window() time.Duration { return r.firstOK.Sub(r.firstBad) }

// report logs the figures; promotion names the server-side event that
// r.promoted marks.
func (r loadResult) report(t testing.TB, what, promotion string) {
	t.Helper()
	if r.firstBad.IsZero() || r.firstOK.IsZero() {
		t.Logf("%s: no recovery seen: first failure %v after the kill; %d calls, %d failed", what, r.firstBad.Sub(r.killed), r.calls, r.failed)
		return
	}
	t.Logf("%s: outage window %v (first failure %v after the kill, first success %v after the kill, last failure %v after it); "+
		"%d calls by %d goroutines, %d of them failed; slowest call %v",
		what, r.window().Round(time.Millisecond), r.firstBad.Sub(r.killed).Round(time.Millisecond),
		r.firstOK.Sub(r.killed).Round(time.Millisecond), r.lastBad.Sub(r.killed).Round(time.Millisecond),
		r.calls, loadGoroutines, r.failed, r.slowest.Round(time.Millisecond))
	if !r.promoted.IsZero() {
		t.Logf("%s: %s %v after the kill (polled every ~10ms); the first call succeeded %v after that",
			what, promotion, r.promoted.Sub(r.killed).Round(time.Millisecond), r.firstOK.Sub(r.promoted).Round(time.Millisecond))
	}
	if r.failedOther+r.otherOKInWindow > 0 {
		t.Logf("%s: calls on other keys during the window: %d succeeded, %d failed after the kill", what, r.otherOKInWindow, r.failedOther)
		for _, e := range r.otherErrors[:min(3, len(r.otherErrors))] {
			t.Logf("%s: error seen on other keys: %s", what, e)
		}
	}
	for i, e := range r.errors {
		if i == 5 {
			t.Logf("… %d more distinct errors", len(r.errors)-i)
			break
		}
		t.Logf("error seen: %s", e)
	}
}

// requireRecovered checks what every failover must give: the kill was
// felt, the Service worked again within recoveryBound and kept working, and
// no call outlived its bound.
func (r loadResult) requireRecovered(t testing.TB) {
	t.Helper()
	assert.Zero(t, r.failedBeforeKill, "calls failed before the kill")
	require.False(t, r.firstBad.IsZero(), "no call failed after the master was killed: the test did not test a failover")
	require.False(t, r.firstOK.IsZero(), "no call succeeded within %v of the first failure", recoveryBound)
	assert.True(t, r.sawDown, "IsConnected never turned false after the kill")
	assert.Less(t, r.window(), recoveryBound, "outage window")
	assert.Zero(t, r.failedAtEnd, "calls failed in the last 2s of the load, after the failover")
	assert.LessOrEqual(t, r.slowest, callBound, "slowest call; want every call bounded")
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// Package testredis is the test harness shared by the redisservice tests
// and those of its sub-modules (scsstore): the backends a behaviour test
// runs on, their cleanup, and waiting for a condition.
//
// A test runs on miniredis always, on a real redis-server when
// REDIS_TEST_URL is set and on a real Redis Cluster when REDIS_TEST_CLUSTER
// lists its nodes ("host:port,host:port"); scripts/redis-test-servers start
// prints both. Without a variable, its subtest skips and says how to enable
// it. Each test keeps its keys under a random prefix of its own and deletes
// only those at cleanup; it never flushes a server.
package testredis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// The variables that name the real servers the tests may use.
const (
	EnvURL     = "REDIS_TEST_URL"
	EnvCluster = "REDIS_TEST_CLUSTER"
)

// Names lists the backends ForEach runs on, in order.
var Names = []string{"miniredis", "redis", "cluster"}

// WaitDeadline is how long WaitFor polls: long enough that only a
// condition that never comes true fails, however loaded the machine.
const WaitDeadline = 20 * time.Second

// Backend is one Redis that a test runs on.
type Backend struct {
	Name      string
	Miniredis *miniredis.Miniredis  // nil on a real server
	Client    redis.UniversalClient // unprefixed, the test's own, closed at cleanup
	Prefix    string                // the test's key prefix, unique per test
	now       time.Time             // miniredis only: the server's TIME
}

// ForEach runs fn as a subtest per backend of Names, each with a Backend
// from New(t, name, keyPrefix).
func ForEach(t *testing.T, keyPrefix string, fn func(t *testing.T, b *Backend)) {
	t.Helper()
	for _, name := range Names {
		t.Run(name, func(t *testing.T) {
			fn(t, New(t, name, keyPrefix))
		})
	}
}

// New connects to the named backend for one test. The Backend's Prefix is
// keyPrefix followed by random hex and a colon. At cleanup New deletes
// the keys under that Prefix from a real server (every master of a
// cluster) and closes the client. A real backend whose variable is unset
// skips the test. On miniredis the server's TIME is fixed; Pass moves it.
func New(t testing.TB, name, keyPrefix string) *Backend {
	t.Helper()
	b := &Backend{Name: name, Prefix: keyPrefix + RandomHex(t, 6) + ":"}
	switch name {
	case "miniredis":
		b.Miniredis = miniredis.RunT(t)
		b.now = time.Now().Truncate(time.Millisecond)
		b.Miniredis.SetTime(b.now)
		b.Client = redis.NewClient(&redis.Options{Addr: b.Miniredis.Addr(), ContextTimeoutEnabled: true})
	case "redis":
		url := os.Getenv(EnvURL)
		if url == "" {
			t.Skipf("no real Redis: set %s (scripts/redis-test-servers start prints it)", EnvURL)
		}
		opts, err := redis.ParseURL(url)
		if err != nil {
			t.Fatalf("%s: %v", EnvURL, err)
		}
		opts.ContextTimeoutEnabled = true
		b.Client = redis.NewClient(opts)
	case "cluster":
		addrs := os.Getenv(EnvCluster)
		if addrs == "" {
			t.Skipf("no real Redis Cluster: set %s (scripts/redis-test-servers start prints it)", EnvCluster)
		}
		b.Client = redis.NewClusterClient(&redis.ClusterOptions{
			Addrs:                 strings.Split(addrs, ","),
			ContextTimeoutEnabled: true,
		})
	default:
		t.Fatalf("unknown backend %q", name)
	}
	t.Cleanup(func() {
		if b.Real() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := DeleteByPrefix(ctx, b.Client, b.Prefix); err != nil {
				t.Errorf("cleanup of %s*: %v", b.Prefix, err)
			}
		}
		_ = b.Client.Close()
	})
	return b
}

// Real reports whether b is a real redis-server (standalone or cluster).
func (b *Backend) Real() bool { return b.Miniredis == nil }

// Now returns the server's TIME on miniredis, as Pass moved it, and the
// zero time on a real server.
func (b *Backend) Now() time.Time { return b.now }

// Pass lets d go by: on miniredis it moves TTLs and TIME forward at once;
// on a real server it sleeps. Check its effect with b.WaitFor.
func (b *Backend) Pass(d time.Duration) {
	if b.Real() {
		time.Sleep(d)
		return
	}
	b.Miniredis.FastForward(d)
	b.now = b.now.Add(d)
	b.Miniredis.SetTime(b.now)
}

// WaitFor polls cond until it holds: up to WaitDeadline on a real server,
// where expiry is only approximately on time, and once on miniredis,
// where time moves only with Pass.
func (b *Backend) WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	if b.Real() {
		WaitFor(t, what, cond)
		return
	}
	if !cond() {
		t.Fatalf("%s: condition never held", what)
	}
}

// Raw returns key as stored, with the test's prefix.
func (b *Backend) Raw(key string) string { return b.Prefix + key }

// WaitFor polls cond until it holds, and fails the test when it still
// does not after WaitDeadline. Wait with it for what another goroutine,
// process or server does, rather than sleep for a time that a loaded
// machine may overrun.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(WaitDeadline)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: condition never held within %v", what, WaitDeadline)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// DeleteByPrefix removes every key starting with prefix, on every master
// of a cluster. The prefix must hold no glob characters (*?[\).
func DeleteByPrefix(ctx context.Context, c redis.UniversalClient, prefix string) error {
	del := func(ctx context.Context, n redis.UniversalClient) error {
		iter := n.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		for iter.Next(ctx) {
			if err := n.Del(ctx, iter.Val()).Err(); err != nil {
				return err
			}
		}
		return iter.Err()
	}
	if cc, ok := c.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error { return del(ctx, n) })
	}
	return del(ctx, c)
}

// RandomHex returns n random bytes in hex.
func RandomHex(t testing.TB, n int) string {
	t.Helper()
	buf := make([]byte, n)
	if _, err := rand.Read(buf); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(buf)
}

// Context returns a context that ends with the test, or after 30s.
func Context(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// ClosedAddr returns a loopback address ("127.0.0.1:port") where nothing
// listens: a port that was free a moment ago, so that a dial to it is
// refused.
func ClosedAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

package redisservice

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The behaviour tests run against every backend named here: miniredis
// always, a real redis-server when REDIS_TEST_URL is set, and a real Redis
// Cluster when REDIS_TEST_CLUSTER lists its nodes ("host:port,host:port").
// scripts/redis-test-servers starts both and prints the variables.
const (
	envTestURL     = "REDIS_TEST_URL"
	envTestCluster = "REDIS_TEST_CLUSTER"
)

// backend is one Redis that a behaviour test runs against.
type backend struct {
	name   string
	mr     *miniredis.Miniredis  // nil on a real server
	client redis.UniversalClient // unprefixed client of the test's own
	prefix string                // the test's key prefix, unique per test
	now    time.Time             // miniredis only: the server's TIME
}

// real reports whether b is a real redis-server (standalone or cluster).
func (b *backend) real() bool { return b.mr == nil }

// forEachBackend runs fn as a subtest per backend. Subtests for real
// servers skip, saying how to enable them, when their variable is unset.
func forEachBackend(t *testing.T, fn func(t *testing.T, b *backend)) {
	t.Helper()
	for _, name := range []string{"miniredis", "redis", "cluster"} {
		t.Run(name, func(t *testing.T) {
			fn(t, newBackend(t, name))
		})
	}
}

// newBackend connects to the named backend for one test, and removes the
// test's keys at cleanup. It never flushes a server.
func newBackend(t testing.TB, name string) *backend {
	t.Helper()
	heldLogs.ShowOnFailure(t)
	b := &backend{name: name, prefix: "rstest:" + randomHex(t, 6) + ":"}
	switch name {
	case "miniredis":
		b.mr = miniredis.RunT(t)
		b.now = time.Now().Truncate(time.Millisecond)
		b.mr.SetTime(b.now)
		b.client = redis.NewClient(&redis.Options{Addr: b.mr.Addr(), ContextTimeoutEnabled: true})
	case "redis":
		url := os.Getenv(envTestURL)
		if url == "" {
			t.Skipf("no real Redis: set %s (scripts/redis-test-servers start prints it)", envTestURL)
		}
		opts, err := redis.ParseURL(url)
		require.NoError(t, err, "%s", envTestURL)
		opts.ContextTimeoutEnabled = true
		b.client = redis.NewClient(opts)
	case "cluster":
		addrs := os.Getenv(envTestCluster)
		if addrs == "" {
			t.Skipf("no real Redis Cluster: set %s (scripts/redis-test-servers start prints it)", envTestCluster)
		}
		b.client = redis.NewClusterClient(&redis.ClusterOptions{
			Addrs:                 strings.Split(addrs, ","),
			ContextTimeoutEnabled: true,
		})
	default:
		require.FailNow(t, fmt.Sprintf("unknown backend %q", name))
	}
	t.Cleanup(func() {
		if b.real() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := deleteByPrefix(ctx, b.client, b.prefix)
			assert.NoError(t, err, "cleanup of %s*", b.prefix)
		}
		_ = b.client.Close()
	})
	return b
}

// service returns a Service over b with the test's key prefix. It is
// closed at cleanup. Fields of opts other than Client and KeyPrefix are
// kept.
func (b *backend) service(t testing.TB, opts Options) *Service {
	t.Helper()
	opts.Client = b.client
	opts.KeyPrefix = b.prefix + opts.KeyPrefix
	s, err := New(opts)
	require.NoError(t, err, "New")
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// pass lets d go by: on miniredis it moves TTLs and TIME forward at once;
// on a real server it sleeps. Check its effect with waitFor, not at once.
func (b *backend) pass(d time.Duration) {
	if b.real() {
		time.Sleep(d)
		return
	}
	b.mr.FastForward(d)
	b.now = b.now.Add(d)
	b.mr.SetTime(b.now)
}

// waitFor polls cond until it holds: up to waitDeadline on a real
// server, where expiry is only approximately on time, and once on
// miniredis, where time moves only with pass.
func (b *backend) waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitDeadline)
	for !cond() {
		require.False(t, !b.real() || time.Now().After(deadline), "%s: condition never held", what)
		time.Sleep(5 * time.Millisecond)
	}
}

// raw returns key as stored, with the test's prefix.
func (b *backend) raw(key string) string { return b.prefix + key }

// deleteByPrefix removes every key starting with prefix, on every master
// of a cluster.
func deleteByPrefix(ctx context.Context, c redis.UniversalClient, prefix string) error {
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

func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return hex.EncodeToString(b)
}

// ctxT returns a context that ends with the test.
func ctxT(t testing.TB) context.Context {
	t.Helper()
	heldLogs.ShowOnFailure(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

package redisservice

import (
	"context"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/vevurn/redisservice/internal/testredis"
)

// The behaviour tests run against every backend of internal/testredis:
// miniredis always, a real redis-server when REDIS_TEST_URL is set, and a
// real Redis Cluster when REDIS_TEST_CLUSTER lists its nodes.
const (
	envTestURL     = testredis.EnvURL
	envTestCluster = testredis.EnvCluster
)

// backend is one Redis that a behaviour test runs on: a testredis.Backend
// with the short field names the tests of this package use.
type backend struct {
	tb     *testredis.Backend // nil for a backend a test built itself
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
	for _, name := range testredis.Names {
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
	tb := testredis.New(t, name, "rstest:")
	return &backend{tb: tb, name: tb.Name, mr: tb.Miniredis, client: tb.Client, prefix: tb.Prefix, now: tb.Now()}
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
	if b.tb == nil {
		time.Sleep(d)
		return
	}
	b.tb.Pass(d)
	b.now = b.tb.Now()
}

// waitFor polls cond until it holds: up to waitDeadline on a real
// server, where expiry is only approximately on time, and once on
// miniredis, where time moves only with pass.
func (b *backend) waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	if b.tb == nil {
		testredis.WaitFor(t, what, cond)
		return
	}
	b.tb.WaitFor(t, what, cond)
}

// raw returns key as stored, with the test's prefix.
func (b *backend) raw(key string) string { return b.prefix + key }

// deleteByPrefix removes every key starting with prefix, on every master
// of a cluster.
func deleteByPrefix(ctx context.Context, c redis.UniversalClient, prefix string) error {
	return testredis.DeleteByPrefix(ctx, c, prefix)
}

// randomHex returns n random bytes in hex.
func randomHex(t testing.TB, n int) string {
	t.Helper()
	return testredis.RandomHex(t, n)
}

// ctxT returns a context that ends with the test.
func ctxT(t testing.TB) context.Context {
	t.Helper()
	heldLogs.ShowOnFailure(t)
	return testredis.Context(t)
}

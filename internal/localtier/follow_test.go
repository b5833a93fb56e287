package localtier

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// waitFor bounds the waits for the background work: generous, for a
// loaded machine.
const waitFor = 10 * time.Second

// follow runs lt.Follow(top) in the background until the test ends, and
// then waits for it and its trackers to return.
func follow(tb testing.TB, lt *Tier, top Topology) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	start := func(fn func(context.Context)) bool {
		wg.Go(func() { fn(ctx) })
		return true
	}
	start(func(ctx context.Context) { lt.Follow(ctx, top, start) })
	tb.Cleanup(func() {
		cancel()
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(waitFor):
			assert.Fail(tb, "Follow or a tracker did not return after its ctx ended")
		}
	})
}

// listing is a Topology of no node whose fingerprint and error the test
// sets, and which counts its listings.
type listing struct {
	mu    sync.Mutex // guards fp and err
	fp    string
	err   error
	lists atomic.Int32
}

func (l *listing) set(fp string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.fp, l.err = fp, err
}

func (l *listing) topology(rediscover bool) Topology {
	return Topology{Rediscover: rediscover, List: func(context.Context) (map[string]*redis.Options, string, error) {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.lists.Add(1)
		return nil, l.fp, l.err
	}}
}

// relisted waits until l has been listed again after this call.
func (l *listing) relisted(tb testing.TB) {
	tb.Helper()
	n := l.lists.Load()
	require.Eventually(tb, func() bool { return l.lists.Load() > n+1 }, waitFor, time.Millisecond, "the nodes listed again")
}

func TestFollowFingerprint(t *testing.T) {
	t.Parallel()
	lt := New(Config{Entries: 10, Bytes: 1 << 20})
	t.Cleanup(lt.Close)
	var l listing
	l.set("a", nil)
	follow(t, lt, l.topology(true))
	require.Eventually(t, lt.Usable, waitFor, time.Millisecond, "the tier in use after the first listing")
	Put(lt, "k", lt.Ticket("k", ""), "v", 1, time.Now(), time.Minute, 0)
	l.relisted(t)
	assert.True(t, Holds[string](lt, "k"), "a listing with the same fingerprint keeps the values")
	l.set("b", nil)
	l.relisted(t)
	assert.False(t, Holds[string](lt, "k"), "a listing with a new fingerprint empties the tier")
	assert.True(t, lt.Usable())
}

func TestFollowDoubt(t *testing.T) {
	t.Parallel()
	lt := New(Config{Entries: 10, Bytes: 1 << 20})
	t.Cleanup(lt.Close)
	var l listing
	follow(t, lt, l.topology(false))
	require.Eventually(t, lt.Usable, waitFor, time.Millisecond, "the tier in use after the first listing")
	l.set("", errors.New("no sentinel answers"))
	lt.RaiseDoubt()
	l.relisted(t) // asked for by the doubt, and failed
	assert.False(t, lt.Usable(), "in doubt while the nodes cannot be listed")
	l.set("", nil)
	require.Eventually(t, lt.Usable, waitFor, time.Millisecond, "a listing after a failed one settles the doubt")
	lt.RaiseDoubt()
	require.Eventually(t, lt.Usable, waitFor, time.Millisecond, "a fixed topology listed again when in doubt")
}

func TestFollowListingWithoutTracking(t *testing.T) {
	t.Parallel()
	lt := New(Config{Entries: 10, Bytes: 1 << 20})
	t.Cleanup(lt.Close)
	var l listing
	l.set("", fmt.Errorf("%w: client type X", ErrNoTracking))
	follow(t, lt, l.topology(true))
	require.Eventually(t, lt.off.Load, waitFor, time.Millisecond, "the tier switched off")
	assert.False(t, lt.Usable())
}

func TestFollowServerWithoutTracking(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t) // no CLIENT TRACKING
	var logs syncBuffer
	lt := New(Config{Entries: 10, Bytes: 1 << 20, Log: slog.New(slog.NewTextHandler(&logs, nil))})
	t.Cleanup(lt.Close)
	nodes := map[string]*redis.Options{mr.Addr(): {Addr: mr.Addr()}}
	follow(t, lt, Topology{List: func(context.Context) (map[string]*redis.Options, string, error) { return nodes, "", nil }})
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "local cache tier off") }, waitFor, time.Millisecond,
		"a log line says the tier is off")
	assert.Contains(t, logs.String(), "CLIENT TRACKING")
	assert.False(t, lt.Usable())
}

// TestFollowRedis follows one real node: its invalidations reach the tier,
// and a killed tracking connection empties the tier until it is back.
func TestFollowRedis(t *testing.T) {
	t.Parallel()
	url := os.Getenv("REDIS_TEST_URL")
	if url == "" {
		t.Skip("no real Redis: set REDIS_TEST_URL (scripts/redis-test-servers start prints it)")
	}
	base, err := redis.ParseURL(url)
	require.NoError(t, err)
	name := fmt.Sprintf("lttest-%d", time.Now().UnixNano())
	base.ClientName = name
	prefix := name + ":"
	raw := redis.NewClient(&redis.Options{Addr: base.Addr, Username: base.Username, Password: base.Password, DB: base.DB})
	t.Cleanup(func() { _ = raw.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	lt := New(Config{Entries: 100, Bytes: 1 << 20, Prefix: prefix})
	t.Cleanup(lt.Close)
	nodes := map[string]*redis.Options{base.Addr: base}
	follow(t, lt, Topology{List: func(context.Context) (map[string]*redis.Options, string, error) { return nodes, "", nil }})
	require.Eventually(t, lt.Usable, waitFor, time.Millisecond, "the tier in use")
	assert.NotEqual(t, Ticket{}, lt.Ticket("k", base.Addr), "a ticket for the node tracked")

	for _, k := range []string{"a", "b"} {
		Put(lt, k, lt.Ticket(k, ""), "v", 1, time.Now(), time.Minute, 0)
	}
	require.NoError(t, raw.Set(ctx, prefix+"a", "changed", time.Minute).Err())
	require.NoError(t, raw.Set(ctx, "other:"+prefix+"b", "x", time.Minute).Err())
	t.Cleanup(func() { raw.Del(context.Background(), prefix+"a", "other:"+prefix+"b") })
	require.Eventually(t, func() bool { return !Holds[string](lt, "a") }, waitFor, time.Millisecond, "the invalidation of a key under the prefix")
	assert.True(t, Holds[string](lt, "b"), "a key outside the prefix")

	// Kill the tracking connection: the tier empties, and a read begun
	// before keeps nothing.
	tk := lt.Ticket("b", "")
	list, err := raw.ClientList(ctx).Result()
	require.NoError(t, err)
	killed := 0
	for _, line := range strings.Split(list, "\n") {
		if strings.Contains(line, " name="+name+"-tracking ") {
			id, _, _ := strings.Cut(strings.TrimPrefix(line, "id="), " ")
			require.NoError(t, raw.Do(ctx, "CLIENT", "KILL", "ID", id).Err())
			killed++
		}
	}
	require.Equal(t, 1, killed, "tracking connections")
	require.Eventually(t, func() bool { return !Holds[string](lt, "b") }, waitFor, time.Millisecond, "a lost connection empties the tier")
	require.Eventually(t, lt.Usable, waitFor, time.Millisecond, "the tier in use again")
	Put(lt, "b", tk, "v", 1, time.Now(), time.Minute, 0)
	assert.False(t, Holds[string](lt, "b"), "a value read before the connection was lost")
}

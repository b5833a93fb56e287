package redisservice

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
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

// Lost replies: the server runs a command, and its reply never reaches
// the client. lostReplies does that from inside the client, as its
// Dialer, so it works the same for redis.Client, ClusterClient and
// FailoverClient (on every node they dial). Armed for a command, it lets
// the command through, waits for the reply (so the server has run it),
// throws the reply away and then either closes the connection, as a
// dropped connection would (go-redis, with its default MaxRetries, sends
// the command again on a new connection), or holds it, answering
// nothing more, so that the client times out.

// lossMode says what happens to the reply of an armed command.
type lossMode int32

const (
	loseAndClose lossMode = iota + 1 // drop the reply, close: go-redis retries
	loseAndHold                      // drop the reply, answer nothing: the client times out
)

// lostReplies is a go-redis Dialer that loses the reply to an armed
// command. The zero value is not ready: use newLostReplies.
type lostReplies struct {
	mu    sync.Mutex // guards match and mode
	match func(args []string) bool
	mode  lossMode

	seen atomic.Int64 // commands sent that the armed predicate matched, retries included
	lost atomic.Int64 // replies thrown away
}

func newLostReplies() *lostReplies { return &lostReplies{} }

// arm makes the next command for which match reports true lose its reply
// as mode says. Commands the predicate matches later are counted in seen
// but pass untouched.
func (l *lostReplies) arm(mode lossMode, match func(args []string) bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.match, l.mode = match, mode
	l.seen.Store(0)
}

// take reports how the reply to the command args is to be lost, if it
// is: the first match after arm is, and disarms.
func (l *lostReplies) take(args []string) lossMode {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.match == nil || !l.match(args) {
		return 0
	}
	l.seen.Add(1)
	mode := l.mode
	l.mode = 0
	return mode
}

// rearm arms l again for the command whose reply was to be lost but
// that did not run.
func (l *lostReplies) rearm(mode lossMode) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.mode = mode
}

// dial is a Dialer for redis.Options, ClusterOptions and FailoverOptions.
func (l *lostReplies) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return &lossyConn{Conn: c, l: l}, nil
}

// lossyConn is one connection dialled through lostReplies.
type lossyConn struct {
	net.Conn
	l    *lostReplies
	doom atomic.Int32 // a lossMode: what to do with the next reply
}

func (c *lossyConn) Write(b []byte) (int, error) {
	for _, args := range respCommands(b) {
		if mode := c.l.take(args); mode != 0 {
			c.doom.Store(int32(mode))
		}
	}
	return c.Conn.Write(b)
}

func (c *lossyConn) Read(b []byte) (int, error) {
	mode := lossMode(c.doom.Swap(0))
	if mode == 0 {
		return c.Conn.Read(b)
	}
	// The reply (or its first bytes) arriving means the server has run
	// the command. Throw it away, unless the command did not run: a
	// script not loaded yet, which go-redis sends again with EVAL.
	buf := make([]byte, 64<<10)
	n, err := c.Conn.Read(buf)
	if err != nil {
		return 0, err
	}
	if bytes.HasPrefix(buf[:n], []byte("-NOSCRIPT")) {
		c.l.rearm(mode)
		return copy(b, buf[:n]), nil // go-redis reads into a larger buffer
	}
	c.l.lost.Add(1)
	if mode == loseAndClose {
		c.Conn.Close()
		return 0, io.EOF
	}
	// Hold: answer nothing until the client's read deadline passes or it
	// closes the connection; a late part of the lost reply is dropped too.
	for {
		if _, err := c.Conn.Read(buf); err != nil {
			return 0, err
		}
	}
}

// respCommands parses the RESP commands (arrays of bulk strings) in b,
// as go-redis writes them. It stops at anything else, such as a command
// split across two writes.
func respCommands(b []byte) [][]string {
	var cmds [][]string
	line := func() (string, bool) {
		i := bytes.Index(b, []byte("\r\n"))
		if i < 0 {
			return "", false
		}
		s := string(b[:i])
		b = b[i+2:]
		return s, true
	}
	for len(b) > 0 && b[0] == '*' {
		head, ok := line()
		n, err := strconv.Atoi(strings.TrimPrefix(head, "*"))
		if !ok || err != nil {
			return cmds
		}
		args := make([]string, 0, n)
		for range n {
			h, ok := line()
			size, err := strconv.Atoi(strings.TrimPrefix(h, "$"))
			if !ok || err != nil || !strings.HasPrefix(h, "$") || size < 0 || len(b) < size+2 {
				return cmds
			}
			args = append(args, string(b[:size]))
			b = b[size+2:]
		}
		cmds = append(cmds, args)
	}
	return cmds
}

// scriptOn returns a predicate matching a script call (EVALSHA or EVAL,
// or their read-only forms) whose first key is key.
func scriptOn(key string) func(args []string) bool {
	return func(args []string) bool {
		if len(args) < 4 || !strings.HasPrefix(strings.ToLower(args[0]), "eval") {
			return false
		}
		n, err := strconv.Atoi(args[2])
		return err == nil && n >= 1 && args[3] == key
	}
}

// commandOn returns a predicate matching the command name (any case)
// whose first argument is key.
func commandOn(name, key string) func(args []string) bool {
	return func(args []string) bool {
		return len(args) >= 2 && strings.EqualFold(args[0], name) && args[1] == key
	}
}

// lossyClient returns a client of its own to b's server (Sentinel's
// master for "sentinel") that dials through l, with go-redis's default
// retries. It is closed at cleanup.
func lossyClient(t testing.TB, b *backend, l *lostReplies) redis.UniversalClient {
	t.Helper()
	var c redis.UniversalClient
	switch b.name {
	case "miniredis":
		c = redis.NewClient(&redis.Options{Addr: b.mr.Addr(), Dialer: l.dial, ContextTimeoutEnabled: true})
	case "redis":
		opts, err := redis.ParseURL(os.Getenv(envTestURL))
		require.NoError(t, err)
		opts.Dialer, opts.ContextTimeoutEnabled = l.dial, true
		c = redis.NewClient(opts)
	case "cluster":
		c = redis.NewClusterClient(&redis.ClusterOptions{
			Addrs: strings.Split(os.Getenv(envTestCluster), ","), Dialer: l.dial, ContextTimeoutEnabled: true,
		})
	case "sentinel":
		c = newSentinelClient(t, l.dial)
	default:
		require.FailNow(t, fmt.Sprintf("lossyClient: unknown backend %q", b.name))
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// hookedClient returns a client of its own to b's server, for a test that
// adds hooks to it.
func hookedClient(t testing.TB, b *backend) redis.UniversalClient {
	t.Helper()
	return lossyClient(t, b, newLostReplies())
}

// newSentinelClient returns a FailoverClient to the shared Sentinel
// set's master, dialling through dial when it is not nil.
func newSentinelClient(t testing.TB, dial func(context.Context, string, string) (net.Conn, error)) *redis.Client {
	t.Helper()
	return redis.NewFailoverClient(&redis.FailoverOptions{
		MasterName:            os.Getenv(envTestSentinelMaster),
		SentinelAddrs:         strings.Split(os.Getenv(envTestSentinel), ","),
		SentinelPassword:      os.Getenv(envTestSentinelPassword),
		Password:              os.Getenv(envTestSentinelMasterPwd),
		Dialer:                dial,
		ContextTimeoutEnabled: true,
	})
}

// forEachLossyBackend runs fn on every backend of forEachBackend and on
// the Sentinel set of REDIS_TEST_SENTINEL (whose master is only read
// and written under the test's prefix: nothing is killed or failed
// over), each with a Service that talks to it through l.
func forEachLossyBackend(t *testing.T, fn func(t *testing.T, b *backend, l *lostReplies, s *Service)) {
	t.Helper()
	run := func(t *testing.T, b *backend) {
		l := newLostReplies()
		s := newService(t, Options{Client: lossyClient(t, b, l), KeyPrefix: b.prefix})
		fn(t, b, l, s)
	}
	forEachBackend(t, run)
	t.Run("sentinel", func(t *testing.T) {
		if os.Getenv(envTestSentinel) == "" || os.Getenv(envTestSentinelMaster) == "" {
			t.Skipf("no Redis Sentinel: set %s and %s (scripts/redis-test-servers start prints them)", envTestSentinel, envTestSentinelMaster)
		}
		b := &backend{name: "sentinel", prefix: "rstest:" + randomHex(t, 6) + ":", client: newSentinelClient(t, nil)}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := deleteByPrefix(ctx, b.client, b.prefix)
			assert.NoError(t, err, "cleanup of %s*", b.prefix)
			_ = b.client.Close()
		})
		run(t, b)
	})
}

// TestLostReplyMakesGoRedisRetry shows that the tool provokes a second
// run of a command whose reply was lost, on every backend, so that the
// tests built on it can fail.
func TestLostReplyMakesGoRedisRetry(t *testing.T) {
	t.Parallel()
	forEachLossyBackend(t, func(t *testing.T, b *backend, l *lostReplies, s *Service) {
		ctx := ctxT(t)
		c := s.Client()
		key := b.raw("counter")
		l.arm(loseAndClose, commandOn("incr", key))
		n, err := c.Incr(ctx, key).Result()
		require.NoError(t, err, "INCR with its first reply lost")
		require.Equal(t, int64(2), n, "INCR with its first reply lost: retried, so run twice")
		require.Equal(t, int64(1), l.lost.Load(), "replies lost")
		require.Equal(t, int64(2), l.seen.Load(), "INCR sent")

		l.arm(loseAndHold, commandOn("incr", key))
		hold, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		err = c.Incr(hold, key).Err()
		require.Equal(t, int64(2), l.lost.Load(), "the held INCR's reply thrown away")
		if err == nil && b.name == "cluster" {
			// ClusterClient re-sends a command whose read timed out (an
			// i/o timeout, not the ctx's error) when the socket's deadline
			// fires a moment before ctx's: the held INCR ran, and so did
			// its retry.
			require.Equal(t, "4", c.Get(ctx, key).Val(), "the held INCR and its retry ran")
			return
		}
		require.Error(t, err, "INCR with its reply held")
		require.True(t, errors.Is(err, context.DeadlineExceeded) || isTimeout(err), "INCR with its reply held: %v; want a timeout", err)
		require.Equal(t, "3", c.Get(ctx, key).Val(), "the held INCR ran once")
	})
}

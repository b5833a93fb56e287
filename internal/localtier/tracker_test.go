package localtier

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// connect starts a session of tr on one end of a pipe, as its client's
// dial would, and returns the session's connection and the other end.
func connect(tb testing.TB, tr *tracker) (*trackingConn, net.Conn) {
	tb.Helper()
	a, b := net.Pipe()
	tb.Cleanup(func() { _ = a.Close(); _ = b.Close() })
	tr.mayDial.Store(true)
	dial := tr.dialer(func(context.Context, string, string) (net.Conn, error) { return a, nil })
	cn, err := dial(context.Background(), "tcp", tr.addr)
	require.NoError(tb, err)
	_, err = dial(context.Background(), "tcp", tr.addr)
	require.ErrorIs(tb, err, errTrackingRedial, "a second dial in one session")
	return cn.(*trackingConn), b
}

func TestTrackerUpAndDown(t *testing.T) {
	t.Parallel()
	lt := newTier(t, 10, 1<<20)
	tr := newTracker(lt, "n1")
	assert.False(t, lt.Usable(), "a tracker not subscribed yet")
	tr.subscribed() // no connection yet
	assert.False(t, lt.Usable(), "a subscription acknowledged with no connection")

	c, peer := connect(t, tr)
	tr.subscribed()
	require.True(t, lt.Usable(), "subscribed on a live connection")
	Put(lt, "k", lt.Ticket("k", ""), "v", 1, time.Now(), time.Minute, 0)

	// A read that times out (the PING's turn) is no loss.
	require.NoError(t, c.SetReadDeadline(time.Now().Add(-time.Second)))
	_, err := c.Read(make([]byte, 1))
	require.Error(t, err)
	assert.True(t, lt.Usable(), "after a read timeout")
	assert.True(t, has(lt, "k"))

	// The peer closes: the read that sees it takes the tracker down.
	require.NoError(t, c.SetReadDeadline(time.Time{}))
	require.NoError(t, peer.Close())
	_, err = c.Read(make([]byte, 1))
	require.Error(t, err)
	assert.False(t, lt.Usable(), "after the connection failed")
	assert.False(t, Holds[string](lt, "k"), "a failed connection empties the tier")
	tr.subscribed() // an acknowledgement read before the failure, handled after it
	assert.False(t, lt.Usable(), "a subscription on a failed connection")

	// The next session.
	c2, _ := connect(t, tr)
	tr.subscribed()
	require.True(t, lt.Usable(), "subscribed in a new session")
	c.t.lost(c) // the old session's connection, closed late
	assert.True(t, lt.Usable(), "the loss of an old session's connection")
	require.NoError(t, c2.Close())
	assert.False(t, lt.Usable(), "after the connection was closed")
}

func TestTrackerStop(t *testing.T) {
	t.Parallel()
	lt := newTier(t, 10, 1<<20)
	down := newTracker(lt, "n1")
	up := newTracker(lt, "n2")
	connect(t, up)
	up.subscribed()
	assert.False(t, lt.Usable(), "one of two trackers up")
	down.stop()
	down.stop()
	require.True(t, lt.Usable(), "a tracker stopped while down no longer counts")
	Put(lt, "k", lt.Ticket("k", ""), "v", 1, time.Now(), time.Minute, 0)
	up.stop()
	up.stop()
	assert.True(t, lt.Usable(), "every tracker stopped")
	assert.False(t, Holds[string](lt, "k"), "stopping a tracker that was up empties the tier")
	up.subscribed()
	assert.True(t, lt.Usable())
	assert.False(t, up.up.Load(), "a stopped tracker never comes up")
}

func TestTrackerOptions(t *testing.T) {
	t.Parallel()
	lt := New(Config{Entries: 10, Bytes: 1 << 20, Prefix: "app:"})
	t.Cleanup(lt.Close)
	base := &redis.Options{
		Addr:                     "127.0.0.1:1",
		ClientName:               "svc",
		Protocol:                 3,
		PoolSize:                 50,
		MaxRetries:               3,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeAuto},
	}
	o := newTracker(lt, base.Addr).options(base)
	// go-redis writes to the config behind this pointer in the client's
	// handshakes: a tracker that shared it would race with them.
	assert.NotSame(t, base.MaintNotificationsConfig, o.MaintNotificationsConfig, "the maintenance-notifications config")
	assert.Equal(t, maintnotifications.ModeAuto, base.MaintNotificationsConfig.Mode, "the base's config")
	assert.Equal(t, base.Addr, o.Addr)
	assert.Equal(t, 2, o.Protocol, "invalidations as Pub/Sub messages")
	assert.Equal(t, 1, o.PoolSize)
	assert.Equal(t, -1, o.MaxRetries, "go-redis does not retry on a tracking connection")
	assert.Equal(t, "svc-tracking", o.ClientName)
	assert.NotNil(t, o.OnConnect)
	assert.NotNil(t, o.Dialer)
	assert.Equal(t, 3, base.Protocol, "the base options are left alone")
	assert.Equal(t, 50, base.PoolSize, "the base options are left alone")

	o = newTracker(lt, base.Addr).options(&redis.Options{Addr: base.Addr})
	assert.Equal(t, "redisservice-tracking", o.ClientName, "without a client name")
}

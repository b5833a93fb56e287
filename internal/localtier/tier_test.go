package localtier

import (
	"bytes"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// newTier returns a Tier in use at once, as after a discovery that found
// no node to wait for. It is closed at cleanup.
func newTier(tb testing.TB, entries int, bytes int64) *Tier {
	tb.Helper()
	lt := New(Config{Entries: entries, Bytes: bytes})
	tb.Cleanup(lt.Close)
	require.False(tb, lt.Usable(), "a new tier, before its nodes are known")
	lt.settleDoubt(lt.doubtSeq())
	require.True(tb, lt.Usable())
	return lt
}

// has reports whether Get finds k as a string.
func has(lt *Tier, k string) bool {
	_, _, ok := Get[string](lt, k, time.Now().UnixNano())
	return ok
}

func TestTickets(t *testing.T) {
	t.Parallel()
	lt := newTier(t, 10, 1<<20)
	tk := lt.Ticket("k", "")
	Put(lt, "k", tk, "v", 1, time.Now(), time.Minute, 0)
	assert.True(t, has(lt, "k"), "a value read with no invalidation meanwhile is kept")

	lt = newTier(t, 10, 1<<20)
	tk = lt.Ticket("k", "")
	lt.Invalidate("k") // the key changed while the read was in flight
	Put(lt, "k", tk, "old", 1, time.Now(), time.Minute, 0)
	assert.False(t, has(lt, "k"), "a value read before an invalidation of its key")

	lt = newTier(t, 10, 1<<20)
	tk = lt.Ticket("k", "")
	lt.Invalidate("other")
	lt.Invalidate("k2")
	Put(lt, "k", tk, "v", 1, time.Now(), time.Minute, 0)
	// Other keys may share the stripe: then the value is dropped too, a miss
	// but never a stale read. Keys of other stripes do not matter.
	if lt.stripe("other") != lt.stripe("k") && lt.stripe("k2") != lt.stripe("k") {
		assert.True(t, has(lt, "k"), "invalidations of keys of other stripes")
	}

	lt = newTier(t, 10, 1<<20)
	tk = lt.Ticket("k", "")
	lt.setDown() // the tracker reconnects while the read is in flight
	lt.setUp()
	Put(lt, "k", tk, "v", 1, time.Now(), time.Minute, 0)
	assert.False(t, has(lt, "k"), "a value read across a reconnect of the tracker")

	lt = newTier(t, 10, 1<<20)
	lt.setDown()
	tk = lt.Ticket("k", "")
	lt.setUp()
	Put(lt, "k", tk, "v", 1, time.Now(), time.Minute, 0)
	assert.False(t, has(lt, "k"), "a value read while the tier was unused")

	lt = newTier(t, 10, 1<<20)
	tk = lt.Ticket("k", "")
	lt.RaiseDoubt() // a redirection while the read is in flight
	lt.settleDoubt(lt.doubtSeq())
	Put(lt, "k", tk, "v", 1, time.Now(), time.Minute, 0)
	assert.False(t, has(lt, "k"), "a value read across a doubt about the nodes")

	lt = newTier(t, 10, 1<<20)
	Put(lt, "k", lt.Ticket("k", ""), "v", 1, time.Now(), -2, 0)
	assert.False(t, has(lt, "k"), "a key that was gone (PTTL -2)")
	Put(lt, "k", lt.Ticket("k", ""), "v", 1, time.Now(), -1, 0)
	assert.True(t, has(lt, "k"), "a key without a TTL is kept until invalidated")
	lt.Invalidate("k")
	assert.False(t, has(lt, "k"))

	// Asked at fixed instants, not after a sleep: a loaded machine cannot
	// make the first look come too late.
	lt = newTier(t, 10, 1<<20)
	read := time.Now()
	Put(lt, "k", lt.Ticket("k", ""), "v", 1, read, time.Minute, 0)
	_, _, ok := Get[string](lt, "k", read.Add(time.Minute-time.Millisecond).UnixNano())
	require.True(t, ok, "a copy before its key's PTTL ends")
	_, _, ok = Get[string](lt, "k", read.Add(time.Minute).UnixNano())
	assert.False(t, ok, "a copy outlived its key's PTTL")

	lt = newTier(t, 10, 1<<20)
	start := time.Now()
	Put(lt, "k", lt.Ticket("k", ""), "v", 1, start, time.Minute, 50*time.Second)
	_, stale, ok := Get[string](lt, "k", start.Add(10*time.Second-1).UnixNano())
	require.True(t, ok)
	assert.False(t, stale, "stale before PTTL falls to the StaleWhileRevalidate window")
	v, stale, ok := Get[string](lt, "k", start.Add(10*time.Second).UnixNano())
	require.True(t, ok)
	assert.True(t, stale, "stale once PTTL falls to the StaleWhileRevalidate window")
	assert.Equal(t, "v", v)
}

func TestTicketOfANode(t *testing.T) {
	t.Parallel()
	lt := newTier(t, 10, 1<<20)
	assert.Equal(t, Ticket{}, lt.Ticket("k", "10.0.0.1:6379"), "a ticket for a node not tracked")
	tr := newTracker(lt, "10.0.0.1:6379")
	lt.nodes.Store(&map[string]*tracker{tr.addr: tr})
	connect(t, tr)
	tr.subscribed()
	require.True(t, lt.Usable())
	tk := lt.Ticket("k", tr.addr)
	assert.NotEqual(t, Ticket{}, tk, "a ticket for a node tracked on a live connection")
	Put(lt, "k", tk, "v", 1, time.Now(), time.Minute, 0)
	assert.True(t, has(lt, "k"))
	assert.Equal(t, Ticket{}, lt.Ticket("k", "10.0.0.2:6379"), "a ticket for another node")
}

func TestGetNilInterface(t *testing.T) {
	t.Parallel()
	lt := newTier(t, 10, 1<<20)
	Put[any](lt, "k", lt.Ticket("k", ""), nil, 4, time.Now(), time.Minute, 0) // JSON null read as an any
	v, _, ok := Get[any](lt, "k", time.Now().UnixNano())
	require.True(t, ok, "Get of a nil value")
	assert.Nil(t, v)
	Put[error](lt, "e", lt.Ticket("e", ""), nil, 4, time.Now(), time.Minute, 0)
	e, _, ok := Get[error](lt, "e", time.Now().UnixNano())
	require.True(t, ok, "Get of a nil error")
	assert.NoError(t, e)
}

func TestInvalidateDropsEveryType(t *testing.T) {
	t.Parallel()
	lt := newTier(t, 10, 1<<20)
	Put(lt, "k", lt.Ticket("k", ""), 7, 1, time.Now(), time.Minute, 0)
	Put(lt, "k", lt.Ticket("k", ""), 7.0, 1, time.Now(), time.Minute, 0)
	Put(lt, "other", lt.Ticket("other", ""), 8, 1, time.Now(), time.Minute, 0)
	require.True(t, Holds[int](lt, "k") && Holds[float64](lt, "k"), "copies as int and float64")
	_, _, ok := Get[string](lt, "k", time.Now().UnixNano())
	assert.False(t, ok, "Get of a key held as another type")
	lt.Invalidate("k")
	assert.False(t, Holds[int](lt, "k"), "the int copy")
	assert.False(t, Holds[float64](lt, "k"), "the float64 copy")
	assert.True(t, Holds[int](lt, "other"), "another key")
}

func TestBounds(t *testing.T) {
	t.Parallel()
	put := func(lt *Tier, k string, size int) {
		Put(lt, k, lt.Ticket(k, ""), "v", size, time.Now(), time.Minute, 0)
	}

	lt := newTier(t, 100, 1<<20)
	assert.True(t, lt.store.IsWeighted())
	assert.EqualValues(t, 1<<20, lt.store.GetMaximum(), "the weight bound is Config.Bytes")
	put(lt, "small", 1<<16)
	put(lt, "large", 1<<16+1)
	assert.True(t, has(lt, "small"), "a value of Bytes/16")
	assert.False(t, has(lt, "large"), "a value longer than Bytes/16 is not kept")

	lt = newTier(t, 100, 1<<30) // entries bind
	for i := range 1000 {
		put(lt, strconv.Itoa(i), 10)
	}
	assert.LessOrEqual(t, lt.Len(), 100, "entries kept with Entries 100")
	assert.Positive(t, lt.Len())

	lt = newTier(t, 1000, 1<<20) // bytes bind
	for i := range 1000 {
		put(lt, strconv.Itoa(i), 10_000)
	}
	assert.LessOrEqual(t, lt.Len(), (1<<20)/10_000, "entries of 10 kB kept in 1 MiB")
	assert.LessOrEqual(t, lt.store.WeightedSize(), uint64(1<<20), "weight kept with Bytes 1 MiB")
	assert.Positive(t, lt.Len())
}

func TestDownAndUp(t *testing.T) {
	t.Parallel()
	lt := newTier(t, 10, 1<<20)
	Put(lt, "k", lt.Ticket("k", ""), "v", 1, time.Now(), time.Minute, 0)
	lt.setDown()
	assert.False(t, lt.Usable(), "a source of invalidations missing")
	assert.False(t, Holds[string](lt, "k"), "going down empties the tier")
	assert.Equal(t, Ticket{}, lt.Ticket("k", ""), "a ticket while down")
	lt.setDown()
	lt.setUp()
	assert.False(t, lt.Usable(), "one of two sources back")
	lt.setUp()
	assert.True(t, lt.Usable(), "both back")
}

func TestDoubt(t *testing.T) {
	t.Parallel()
	lt := newTier(t, 10, 1<<20)
	Put(lt, "k", lt.Ticket("k", ""), "v", 1, time.Now(), time.Minute, 0)
	seq := lt.doubtSeq() // a discovery begins
	lt.RaiseDoubt()      // a redirection meanwhile
	assert.False(t, lt.Usable(), "in doubt")
	assert.False(t, Holds[string](lt, "k"), "a doubt empties the tier")
	select {
	case <-lt.nudge:
	default:
		assert.Fail(t, "a doubt asks for a discovery")
	}
	lt.RaiseDoubt()
	lt.RaiseDoubt() // one count, one nudge pending, however many redirections
	lt.settleDoubt(seq)
	assert.False(t, lt.Usable(), "settled by a discovery begun before the doubt")
	lt.settleDoubt(lt.doubtSeq())
	assert.True(t, lt.Usable(), "settled by a discovery begun after the doubt")
	assert.Len(t, lt.nudge, 1)
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func TestOff(t *testing.T) {
	t.Parallel()
	var logs syncBuffer
	lt := New(Config{Entries: 10, Bytes: 1 << 20, Log: slog.New(slog.NewTextHandler(&logs, nil))})
	t.Cleanup(lt.Close)
	lt.settleDoubt(lt.doubtSeq())
	Put(lt, "k", lt.Ticket("k", ""), "v", 1, time.Now(), time.Minute, 0)
	require.True(t, has(lt, "k"))
	lt.Off(errors.New("first reason"))
	lt.Off(errors.New("second reason"))
	assert.False(t, lt.Usable())
	assert.False(t, Holds[string](lt, "k"), "switching off empties the tier")
	assert.Equal(t, 1, strings.Count(logs.String(), "local cache tier off"), "log lines: %s", logs.String())
	assert.Contains(t, logs.String(), "first reason")
	lt.setUp() // a tracker that comes up afterwards
	assert.False(t, lt.Usable(), "off for good")
}

func TestCloseStopsItsGoroutine(t *testing.T) {
	t.Parallel()
	lt := New(Config{Entries: 10, Bytes: 1 << 20})
	lt.settleDoubt(lt.doubtSeq())
	Put(lt, "k", lt.Ticket("k", ""), "v", 1, time.Now(), time.Minute, 0)
	lt.Close()
	assert.False(t, lt.Usable(), "a closed tier")
	assert.False(t, Holds[string](lt, "k"), "Close empties the tier")
	// otter's clean-up goroutine: a second stop reports false.
	assert.False(t, lt.store.StopAllGoroutines(), "otter's goroutine was still running after Close")
}

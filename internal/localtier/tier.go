// Package localtier is the in-process tier of a Redis cache: decoded
// values per key and Go type, each dropped when Redis sends an
// invalidation for its key, and unused while any source of invalidations
// is missing or in doubt.
//
// A [Tier] holds the values ([Get], [Put]) and the state that says
// whether they may be trusted: a ticket taken before each read from Redis
// ([Tier.Ticket]) keeps a value read before an invalidation out of the
// tier. [Tier.Follow] keeps the tier coherent: one connection per data
// node that a [Topology] lists, subscribed to the invalidations of every
// key under a prefix (CLIENT TRACKING ... BCAST PREFIX).
package localtier

import (
	"hash/maphash"
	"log/slog"
	"math"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"
)

// Config configures a [Tier].
type Config struct {
	// Entries bounds the number of values kept. It must be positive.
	Entries int
	// Bytes bounds the values' weight: the length of their JSON, plus their
	// key and about 256 B each. It must be positive. A value whose JSON is
	// longer than Bytes/16 is not kept.
	Bytes int64
	// Prefix is the prefix of the Redis keys tracked; an invalidation's key
	// reaches [Tier.Invalidate] without it.
	Prefix string
	// Log says once why the tier switched itself off. nil logs nothing.
	Log *slog.Logger
}

// A Tier is the in-process tier. It is safe for concurrent use. It starts
// unused, in doubt about the nodes to track, until [Tier.Follow] has
// listed them and tracks each; [Tier.Close] switches it off for good. The
// zero value is not usable: use [New].
type Tier struct {
	store    *otter.Cache[key, *entry]
	seed     maphash.Seed
	maxEntry int64 // the longest JSON value kept, in bytes
	prefix   string
	log      *slog.Logger

	typesMu sync.Mutex                     // serialises additions to types
	types   atomic.Pointer[[]reflect.Type] // every T stored, to drop all copies of a key

	// down counts what keeps invalidations from being trusted: node
	// trackers not subscribed, and a doubt about the topology (before the
	// first discovery, after a redirection). The tier is used only at zero.
	down  atomic.Int32
	off   atomic.Bool // the server cannot track keys, or the tier is closed: never used
	doubt doubt
	nudge chan struct{}                       // asks for a discovery now; buffered
	nodes atomic.Pointer[map[string]*tracker] // every tracked node, by address

	// gen changes whenever the tier is emptied, and each stripe whenever
	// a key hashing to it is invalidated: a read that saw either change
	// while it ran does not leave its value in the tier.
	gen     atomic.Uint64
	stripes [64]atomic.Uint64
}

// doubt is the tier's doubt about the set of nodes to track: set at start
// and by a redirection, settled by a discovery begun after it.
type doubt struct {
	mu  sync.Mutex // guards on and seq
	on  bool       // counted in Tier.down
	seq uint64     // raises so far
}

// key names one value: the key without the prefix, and the type of T.
type key struct {
	name string
	typ  reflect.Type
}

// entry is one decoded value.
type entry struct {
	val     any
	expires int64  // unix nanos when the key expires in Redis; 0: no TTL
	stale   int64  // unix nanos after which the value is served stale; 0: never
	weight  uint32 // what it counts against Config.Bytes
}

// entryOverhead is what an entry costs besides its JSON and key: the
// decoded value's headers, the entry, otter's node (BENCHMARKS.md "Local
// tier" measured ~221 B in all).
const entryOverhead = 256

// New returns a Tier bounded by c.Entries and c.Bytes, unused until
// [Tier.Follow] has listed and tracked the nodes. Call [Tier.Close] to
// stop its cache's clean-up goroutine.
func New(c Config) *Tier {
	// Every entry weighs at least bytes/entries, so that the weight bound
	// keeps both: at most entries values, at most bytes in all.
	minWeight := uint64(max(1, c.Bytes/int64(c.Entries)))
	lt := &Tier{
		store: otter.Must(&otter.Options[key, *entry]{
			MaximumWeight: uint64(c.Bytes),
			Weigher: func(_ key, e *entry) uint32 {
				return uint32(max(uint64(e.weight), minWeight))
			},
			ExpiryCalculator: otter.ExpiryWritingFunc(func(e otter.Entry[key, *entry]) time.Duration {
				if e.Value.expires == 0 {
					return 100 * 365 * 24 * time.Hour // until invalidated or evicted
				}
				return time.Until(time.Unix(0, e.Value.expires))
			}),
		}),
		seed:     maphash.MakeSeed(),
		maxEntry: c.Bytes / maxEntryShare,
		prefix:   c.Prefix,
		log:      c.Log,
		nudge:    make(chan struct{}, 1),
	}
	if lt.log == nil {
		lt.log = slog.New(slog.DiscardHandler)
	}
	lt.down.Store(1) // the doubt, until the nodes are known
	lt.doubt.on = true
	lt.types.Store(new([]reflect.Type))
	lt.nodes.Store(new(map[string]*tracker))
	return lt
}

// maxEntryShare: a value whose JSON is longer than Config.Bytes divided
// by this is not kept, so that one value cannot empty the tier.
const maxEntryShare = 16

// Usable reports whether invalidations arrive, so that the tier may be
// read and filled.
func (lt *Tier) Usable() bool { return lt.down.Load() == 0 && !lt.off.Load() }

// Get returns name's value as a T, unless it is missing, its key has
// expired in Redis by now (unix nanos), or the tier is not usable. stale
// reports that now is past the value's StaleWhileRevalidate point (see
// [Put]). Get allocates nothing.
func Get[T any](lt *Tier, name string, now int64) (v T, stale, ok bool) {
	e, ok := lt.store.GetIfPresent(key{name: name, typ: reflect.TypeFor[T]()})
	// usable is asked after the lookup: a copy found after the tier went
	// down is not served.
	if !ok || (e.expires != 0 && now >= e.expires) || !lt.Usable() {
		return v, false, false
	}
	v, _ = e.val.(T) // a nil T (JSON null read as an interface) is stored as a nil any
	return v, e.stale != 0 && now >= e.stale, true
}

// Holds reports whether lt holds a copy of name as a T that its key's TTL
// has not ended, whether or not lt is usable now. It is for tests and
// diagnostics; a read uses [Get].
func Holds[T any](lt *Tier, name string) bool {
	e, ok := lt.store.GetIfPresent(key{name: name, typ: reflect.TypeFor[T]()})
	return ok && (e.expires == 0 || time.Now().UnixNano() < e.expires)
}

// Len returns how many values lt holds, once its cache has applied the
// evictions pending. It is for tests and diagnostics.
func (lt *Tier) Len() int {
	lt.store.CleanUp()
	return lt.store.EstimatedSize()
}

// A Ticket is taken before a read from Redis whose value may enter the
// tier: [Put] refuses the value when an invalidation came meanwhile. The
// zero Ticket lets no value in.
type Ticket struct {
	ok     bool // the tier was usable when the read began, and the node read is tracked
	gen    uint64
	stripe int
	seq    uint64
}

// Ticket must be taken before the read of name is sent. addr names the
// node that the read goes to, on a cluster; the ticket is void unless
// that node is tracked on a live connection. "" skips that check.
func (lt *Tier) Ticket(name, addr string) Ticket {
	i := lt.stripe(name)
	// gen and the stripe before the checks: a tracker that goes down
	// after them changes gen, which Put sees.
	t := Ticket{ok: true, stripe: i, seq: lt.stripes[i].Load(), gen: lt.gen.Load()}
	if !lt.Usable() || (addr != "" && !lt.live(addr)) {
		return Ticket{}
	}
	return t
}

// live reports whether the node at addr is tracked on a live connection.
func (lt *Tier) live(addr string) bool {
	t := (*lt.nodes.Load())[addr]
	return t != nil && t.up.Load()
}

// Put stores v for name, read from size bytes of JSON by a read sent at
// start that found the key's remaining time to live pttl (-1: none, -2:
// gone), unless an invalidation of the key or an emptying of the tier
// came after t was taken. The value never outlives the key. It is served
// stale (see [Get]) from staleAfter before its key expires; 0: never.
func Put[T any](lt *Tier, name string, t Ticket, v T, size int, start time.Time, pttl, staleAfter time.Duration) {
	k := key{name: name, typ: reflect.TypeFor[T]()}
	weight := uint64(size) + uint64(len(k.name)) + entryOverhead
	if !t.ok || pttl == -2 || (pttl >= 0 && pttl < time.Millisecond) || int64(size) > lt.maxEntry || weight > math.MaxUint32 {
		return
	}
	lt.addType(k.typ)
	e := &entry{val: v, weight: uint32(weight)}
	if pttl > 0 {
		// Counted from before the read: never later than Redis's expiry.
		e.expires = start.Add(pttl).UnixNano()
		if staleAfter > 0 {
			e.stale = start.Add(pttl - staleAfter).UnixNano()
		}
	}
	lt.store.Set(k, e)
	// An invalidation counted after this check deletes the entry itself.
	if lt.stripes[t.stripe].Load() != t.seq || lt.gen.Load() != t.gen || !lt.Usable() {
		lt.store.Invalidate(k)
	}
}

// Invalidate drops every copy of name (a key without the prefix), and
// voids the tickets taken for it before.
func (lt *Tier) Invalidate(name string) {
	lt.stripes[lt.stripe(name)].Add(1)
	for _, typ := range *lt.types.Load() {
		lt.store.Invalidate(key{name: name, typ: typ})
	}
}

// clear empties the tier.
func (lt *Tier) clear() {
	lt.gen.Add(1)
	lt.store.InvalidateAll()
}

// setDown records that one more source of invalidations is missing and
// empties the tier; setUp that one came back.
func (lt *Tier) setDown() {
	lt.down.Add(1)
	lt.clear()
}

func (lt *Tier) setUp() {
	// Empty first: copies read before the source was live may have missed
	// invalidations.
	lt.clear()
	lt.down.Add(-1)
}

// RaiseDoubt empties the tier and keeps it unused until a discovery begun
// after this call has found the nodes, and asks [Tier.Follow] for one
// now. Call it when a node answers for a key that it does not serve (a
// cluster's MOVED or ASK): the nodes listed may be out of date.
func (lt *Tier) RaiseDoubt() {
	lt.doubt.mu.Lock()
	lt.doubt.seq++
	if !lt.doubt.on {
		lt.doubt.on = true
		lt.down.Add(1)
	}
	lt.doubt.mu.Unlock()
	lt.clear()
	select {
	case lt.nudge <- struct{}{}:
	default:
	}
}

// doubtSeq is taken before a discovery, for settleDoubt.
func (lt *Tier) doubtSeq() uint64 {
	lt.doubt.mu.Lock()
	defer lt.doubt.mu.Unlock()
	return lt.doubt.seq
}

// settleDoubt ends the doubt, unless it was raised again after seq was
// taken: the discovery that began then may have seen the old topology.
func (lt *Tier) settleDoubt(seq uint64) {
	lt.doubt.mu.Lock()
	defer lt.doubt.mu.Unlock()
	if lt.doubt.on && lt.doubt.seq == seq {
		lt.doubt.on = false
		lt.down.Add(-1)
	}
}

// Off switches the tier off for good and empties it, because of err (a
// server or client that cannot track keys): it logs why, once.
func (lt *Tier) Off(err error) {
	if lt.off.Swap(true) {
		return
	}
	lt.clear()
	lt.log.Warn("redisservice: local cache tier off: Cache reads Redis on every call", "reason", err.Error())
}

// Close switches the tier off for good, empties it and stops its cache's
// clean-up goroutine. Stop [Tier.Follow] first.
func (lt *Tier) Close() {
	lt.off.Store(true)
	lt.clear()
	lt.store.StopAllGoroutines()
}

func (lt *Tier) stripe(name string) int {
	return int(maphash.String(lt.seed, name) % uint64(len(lt.stripes)))
}

// addType records typ, once.
func (lt *Tier) addType(typ reflect.Type) {
	for _, t := range *lt.types.Load() {
		if t == typ {
			return
		}
	}
	lt.typesMu.Lock()
	defer lt.typesMu.Unlock()
	old := *lt.types.Load()
	for _, t := range old {
		if t == typ {
			return
		}
	}
	types := append(append(make([]reflect.Type, 0, len(old)+1), old...), typ)
	lt.types.Store(&types)
}

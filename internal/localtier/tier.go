package localtier

import (
	"hash/maphash"
	"math"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"
)

// localTier is the in-process tier of [Cache] (Options.LocalCacheEntries):
// decoded values per key and type, dropped on every invalidation that
// Redis sends for their key (see tracking.go), and unused while any
// source of invalidations is missing or in doubt (see topology.go).
type localTier struct {
	store    *otter.Cache[flightKey, *localEntry]
	seed     maphash.Seed
	maxEntry int64 // the longest JSON value kept, in bytes

	typesMu sync.Mutex                     // serialises additions to types
	types   atomic.Pointer[[]reflect.Type] // every T stored, to drop all copies of a key

	// down counts what keeps invalidations from being trusted: node
	// trackers not subscribed, and a doubt about the topology (before the
	// first discovery, after a redirection). The tier is used only at zero.
	down  atomic.Int32
	off   atomic.Bool // the server cannot track keys, or the Service is closed: never used
	doubt localDoubt
	nudge chan struct{}                           // asks for a discovery now; buffered
	nodes atomic.Pointer[map[string]*nodeTracker] // every tracked node, by address

	// gen changes whenever the tier is emptied, and each stripe whenever
	// a key hashing to it is invalidated: a read that saw either change
	// while it ran does not leave its value in the tier.
	gen     atomic.Uint64
	stripes [64]atomic.Uint64
}

// localDoubt is the tier's doubt about the set of nodes to track: set at
// start and by a redirection, settled by a discovery begun after it.
type localDoubt struct {
	mu  sync.Mutex // guards on and seq
	on  bool       // counted in localTier.down
	seq uint64     // raises so far
}

// localEntry is one decoded value.
type localEntry struct {
	val     any
	expires int64  // unix nanos when the key expires in Redis; 0: no TTL
	stale   int64  // unix nanos after which the value is served stale (StaleWhileRevalidate); 0: never
	weight  uint32 // what it counts against Options.LocalCacheBytes
}

// localEntryOverhead is what an entry costs besides its JSON and key: the
// decoded value's headers, the entry, otter's node (BENCHMARKS.md "Local
// tier" measured ~221 B in all).
const localEntryOverhead = 256

func newLocalTier(entries int, bytes int64) *localTier {
	// Every entry weighs at least bytes/entries, so that the weight bound
	// keeps both: at most entries values, at most bytes in all.
	minWeight := uint64(max(1, bytes/int64(entries)))
	lt := &localTier{
		store: otter.Must(&otter.Options[flightKey, *localEntry]{
			MaximumWeight: uint64(bytes),
			Weigher: func(_ flightKey, e *localEntry) uint32 {
				return uint32(max(uint64(e.weight), minWeight))
			},
			ExpiryCalculator: otter.ExpiryWritingFunc(func(e otter.Entry[flightKey, *localEntry]) time.Duration {
				if e.Value.expires == 0 {
					return 100 * 365 * 24 * time.Hour // until invalidated or evicted
				}
				return time.Until(time.Unix(0, e.Value.expires))
			}),
		}),
		seed:     maphash.MakeSeed(),
		maxEntry: bytes / localMaxEntryShare,
		nudge:    make(chan struct{}, 1),
	}
	lt.down.Store(1) // the doubt, until the nodes are known
	lt.doubt.on = true
	lt.types.Store(new([]reflect.Type))
	lt.nodes.Store(new(map[string]*nodeTracker))
	return lt
}

// localMaxEntryShare: a value whose JSON is longer than LocalCacheBytes
// divided by this is not kept, so that one value cannot empty the tier.
const localMaxEntryShare = 16

// usable reports whether invalidations arrive, so that the tier may be
// read and filled.
func (lt *localTier) usable() bool { return lt.down.Load() == 0 && !lt.off.Load() }

// get returns k's value unless it is missing, its key has expired, or the
// tier is not usable. usable is asked after the lookup: a copy found after
// the tier went down is not served.
func (lt *localTier) get(k flightKey, now int64) (*localEntry, bool) {
	e, ok := lt.store.GetIfPresent(k)
	if !ok || (e.expires != 0 && now >= e.expires) || !lt.usable() {
		return nil, false
	}
	return e, true
}

// localTicket is taken before a read from Redis whose value may enter the
// tier: put refuses the value when an invalidation came meanwhile.
type localTicket struct {
	ok     bool // the tier was usable when the read began, and the node read is tracked
	gen    uint64
	stripe int
	seq    uint64
}

// ticket must be taken before the read is sent. addr names the node that
// the read goes to, on a cluster; the ticket is void unless that node is
// tracked on a live connection.
func (lt *localTier) ticket(key, addr string) localTicket {
	i := lt.stripe(key)
	// gen and the stripe before the checks: a tracker that goes down
	// after them changes gen, which put sees.
	t := localTicket{ok: true, stripe: i, seq: lt.stripes[i].Load(), gen: lt.gen.Load()}
	if !lt.usable() || (addr != "" && !lt.live(addr)) {
		return localTicket{}
	}
	return t
}

// live reports whether the node at addr is tracked on a live connection.
func (lt *localTier) live(addr string) bool {
	t := (*lt.nodes.Load())[addr]
	return t != nil && t.up.Load()
}

// put stores v for k, read at start with the key's remaining time to live
// pttl (-1: none) from size bytes of JSON, unless an invalidation of the
// key or an emptying of the tier came after t was taken.
func (lt *localTier) put(k flightKey, t localTicket, v any, size int, start time.Time, pttl, staleAfter time.Duration) {
	weight := uint64(size) + uint64(len(k.key)) + localEntryOverhead
	if !t.ok || pttl == -2 || (pttl >= 0 && pttl < time.Millisecond) || int64(size) > lt.maxEntry || weight > math.MaxUint32 {
		return
	}
	lt.addType(k.typ)
	e := &localEntry{val: v, weight: uint32(weight)}
	if pttl > 0 {
		// Counted from before the read: never later than Redis's expiry.
		e.expires = start.Add(pttl).UnixNano()
		if staleAfter > 0 {
			e.stale = start.Add(pttl - staleAfter).UnixNano()
		}
	}
	lt.store.Set(k, e)
	// An invalidation counted after this check deletes the entry itself.
	if lt.stripes[t.stripe].Load() != t.seq || lt.gen.Load() != t.gen || !lt.usable() {
		lt.store.Invalidate(k)
	}
}

// invalidate drops every copy of key (without the key prefix).
func (lt *localTier) invalidate(key string) {
	lt.stripes[lt.stripe(key)].Add(1)
	for _, typ := range *lt.types.Load() {
		lt.store.Invalidate(flightKey{key: key, typ: typ})
	}
}

// clear empties the tier.
func (lt *localTier) clear() {
	lt.gen.Add(1)
	lt.store.InvalidateAll()
}

// setDown records that one more source of invalidations is missing and
// empties the tier; setUp that one came back.
func (lt *localTier) setDown() {
	lt.down.Add(1)
	lt.clear()
}

func (lt *localTier) setUp() {
	// Empty first: copies read before the source was live may have missed
	// invalidations.
	lt.clear()
	lt.down.Add(-1)
}

// raiseDoubt empties the tier and keeps it unused until a discovery begun
// after this call has found the nodes (settleDoubt), and asks for one now.
func (lt *localTier) raiseDoubt() {
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
func (lt *localTier) doubtSeq() uint64 {
	lt.doubt.mu.Lock()
	defer lt.doubt.mu.Unlock()
	return lt.doubt.seq
}

// settleDoubt ends the doubt, unless it was raised again after seq was
// taken: the discovery that began then may have seen the old topology.
func (lt *localTier) settleDoubt(seq uint64) {
	lt.doubt.mu.Lock()
	defer lt.doubt.mu.Unlock()
	if lt.doubt.on && lt.doubt.seq == seq {
		lt.doubt.on = false
		lt.down.Add(-1)
	}
}

// close switches the tier off for good, empties it and stops otter's
// goroutine.
func (lt *localTier) close() {
	lt.off.Store(true)
	lt.clear()
	lt.store.StopAllGoroutines()
}

func (lt *localTier) stripe(key string) int {
	return int(maphash.String(lt.seed, key) % uint64(len(lt.stripes)))
}

// addType records typ, once.
func (lt *localTier) addType(typ reflect.Type) {
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

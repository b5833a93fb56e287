package redisservice

import (
	"hash/maphash"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"
)

// localTier is the in-process tier of [Cache] (Options.LocalCacheEntries):
// decoded values per key and type, dropped on every invalidation that
// Redis sends for their key (see tracking.go), and unused while any
// tracker cannot receive them.
type localTier struct {
	store *otter.Cache[flightKey, *localEntry]
	seed  maphash.Seed

	typesMu sync.Mutex                     // serialises additions to types
	types   atomic.Pointer[[]reflect.Type] // every T stored, to drop all copies of a key

	// down counts what keeps invalidations from arriving: trackers not
	// subscribed, masters not yet found. The tier is used only at zero.
	down atomic.Int32
	off  atomic.Bool // the server cannot track keys: never used

	// gen changes whenever the tier is emptied, and each stripe whenever
	// a key hashing to it is invalidated: a read that saw either change
	// while it ran does not leave its value in the tier.
	gen     atomic.Uint64
	stripes [64]atomic.Uint64
}

// localEntry is one decoded value.
type localEntry struct {
	val     any
	expires int64 // unix nanos when the key expires in Redis; 0: no TTL
	stale   int64 // unix nanos after which the value is served stale (StaleWhileRevalidate); 0: never
}

func newLocalTier(entries int) *localTier {
	lt := &localTier{
		store: otter.Must(&otter.Options[flightKey, *localEntry]{
			MaximumSize: entries,
			ExpiryCalculator: otter.ExpiryWritingFunc(func(e otter.Entry[flightKey, *localEntry]) time.Duration {
				if e.Value.expires == 0 {
					return 100 * 365 * 24 * time.Hour // until invalidated or evicted
				}
				return time.Until(time.Unix(0, e.Value.expires))
			}),
		}),
		seed: maphash.MakeSeed(),
	}
	lt.down.Store(1) // until the trackers are subscribed
	lt.types.Store(new([]reflect.Type))
	return lt
}

// usable reports whether invalidations arrive, so that the tier may be
// read and filled.
func (lt *localTier) usable() bool { return lt.down.Load() == 0 && !lt.off.Load() }

// get returns k's value unless it is missing or its key has expired.
func (lt *localTier) get(k flightKey, now int64) (*localEntry, bool) {
	e, ok := lt.store.GetIfPresent(k)
	if !ok || (e.expires != 0 && now >= e.expires) {
		return nil, false
	}
	return e, true
}

// localTicket is taken before a read from Redis whose value may enter the
// tier: put refuses the value when an invalidation came meanwhile.
type localTicket struct {
	ok     bool // the tier was usable when the read began
	gen    uint64
	stripe int
	seq    uint64
}

// ticket must be taken before the read is sent.
func (lt *localTier) ticket(key string) localTicket {
	if !lt.usable() {
		return localTicket{}
	}
	i := lt.stripe(key)
	// gen after the stripe: an emptying that ends between the two shows
	// as a changed gen in put.
	t := localTicket{ok: true, stripe: i, seq: lt.stripes[i].Load(), gen: lt.gen.Load()}
	if !lt.usable() {
		return localTicket{}
	}
	return t
}

// put stores v for k, read at start with the key's remaining time to live
// pttl (-1: none), unless an invalidation of the key or an emptying of the
// tier came after t was taken.
func (lt *localTier) put(k flightKey, t localTicket, v any, start time.Time, pttl, staleAfter time.Duration) {
	if !t.ok || pttl == -2 || (pttl >= 0 && pttl < time.Millisecond) {
		return
	}
	lt.addType(k.typ)
	e := &localEntry{val: v}
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

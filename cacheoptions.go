package redisservice

import (
	"fmt"
	"time"
)

// CacheOption is a per-call option of [Cache].
type CacheOption func(*cacheOptions)

type cacheOptions struct {
	swr         time.Duration // StaleWhileRevalidate
	notFound    time.Duration // NotFoundTTL
	noFleetLock bool          // WithoutFleetLock
}

// WithoutFleetLock makes a miss load at once, without the lock key that
// otherwise lets one process of a fleet load a missing key while the
// others wait for its value (see [Cache]). It saves two commands per miss
// (SET NX and DEL), not a round trip: they ride in the pipelines of the
// load's second read and its store. Use it where one process is all
// there is, or where duplicate loads cost less than the wait.
func WithoutFleetLock() CacheOption {
	return func(o *cacheOptions) { o.noFleetLock = true }
}

// StaleWhileRevalidate keeps a value in Redis for d past its TTL. A call
// that finds it there returns it at once, and one background refresh
// (per key and type in this process, and per fleet with the fleet lock)
// reads the key once more and, when it is still stale, loads and stores
// a fresh value. The stored value is the same plain JSON, kept for ttl+d;
// it counts as stale while its PTTL is d or less. The refresh is a load
// like a miss's (see [Cache]: bounded by [Options.Timeout] and
// [Service.Close]); its error is dropped (counted in [Stats] when Redis
// failed, logged when load panicked). When load returns [ErrNotFound],
// the stale value is deleted. d must not be negative; 0 turns it off.
func StaleWhileRevalidate(d time.Duration) CacheOption {
	return func(o *cacheOptions) { o.swr = d }
}

// NotFoundTTL makes Cache remember for d that load returned [ErrNotFound]
// (wrapped or not): calls in that time return an error matching
// ErrNotFound without calling load. The absence is a marker key of its
// own beside key (key + ":redisservice-not-found", holding a value that
// is not JSON), so the cached key itself stays missing for every other
// reader, and a value written to key wins over the marker. Setting the
// marker deletes the value at key (a stale one, under
// [StaleWhileRevalidate]), in the same round trip; storing a value
// through Cache with this option deletes the marker. Reading it
// costs an EXISTS in the same round trip as the GET (on a cluster, a
// second node may be asked in parallel). d must be at least one
// millisecond; without the option nothing is remembered.
func NotFoundTTL(d time.Duration) CacheOption {
	return func(o *cacheOptions) { o.notFound = d }
}

// buildCacheOptions applies opts and validates the result.
func buildCacheOptions(opts []CacheOption) (cacheOptions, error) {
	if len(opts) == 0 {
		return cacheOptions{}, nil // no allocation on a hit without options
	}
	o := new(cacheOptions)
	for _, opt := range opts {
		if opt != nil {
			opt(o)
		}
	}
	return o.validate()
}

// validate returns o, or the first option that cannot work.
func (o *cacheOptions) validate() (cacheOptions, error) {
	if o.swr < 0 {
		return *o, fmt.Errorf("%w: StaleWhileRevalidate %v < 0", ErrInvalidArgument, o.swr)
	}
	if o.notFound != 0 {
		if err := checkTTL(o.notFound); err != nil {
			return *o, fmt.Errorf("NotFoundTTL: %w", err)
		}
	}
	return *o, nil
}

package redisservice

import (
	"reflect"
	"time"
)

// Test-only hooks into the Cache's groups.

// waiting returns how many callers wait for k's load.
func (g *flightGroup) waiting(k flightKey) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if f, ok := g.calls[k]; ok {
		return f.waiters
	}
	return 0
}

// readers returns how many callers wait for the read of key in flight,
// or -1 when none is in flight.
func (g *readGroup[K, V]) readers(key K) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if r, ok := g.reads[key]; ok {
		return r.waiters
	}
	return -1
}

// localHas reports whether the local tier holds a live copy of key as a
// T, whether or not the tier is usable now.
func localHas[T any](s *Service, key string) bool {
	e, ok := s.local.store.GetIfPresent(flightKey{key: key, typ: reflect.TypeFor[T]()})
	return ok && (e.expires == 0 || time.Now().UnixNano() < e.expires)
}

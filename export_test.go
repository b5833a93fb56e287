package redisservice

import (
	"reflect"
	"time"
)

// Test-only hooks into the Cache's groups and tier.

// keyOf returns the flight key of key read as a T.
func keyOf[T any](key string) flightKey { return flightKey{key: key, typ: reflect.TypeFor[T]()} }

// waiting returns how many callers wait for k's load.
func (g *flightGroup) waiting(k flightKey) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if f, ok := g.calls[k]; ok {
		return f.waiters
	}
	return 0
}

// loading reports whether a load of k is in flight in s: the mark that
// keeps a second one from starting.
func loading(s *Service, k flightKey) bool {
	s.flights.mu.Lock()
	defer s.flights.mu.Unlock()
	_, ok := s.flights.calls[k]
	return ok
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

// localHas reports whether the local tier holds a live copy of key as a T.
func localHas[T any](s *Service, key string) bool {
	_, ok := s.local.get(flightKey{key: key, typ: reflect.TypeFor[T]()}, time.Now().UnixNano())
	return ok
}

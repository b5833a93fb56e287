package redisservice

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
func (g *readGroup) readers(key string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if r, ok := g.reads[key]; ok {
		return r.waiters
	}
	return -1
}

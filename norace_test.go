//go:build !race

package redisservice

// raceEnabled reports whether the tests run with -race, under which
// sync.Pool drops items at random, so allocation counts vary.
const raceEnabled = false

package redisservice

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// allowAllFunc is AllowAll or a variant of it.
type allowAllFunc func(ctx context.Context, n int, limits ...KeyLimit) (RateLimitResult, error)

// allowAllPaths returns AllowAll and AllowAll decided slot by slot even
// on a single node, as if each key had a slot of its own, so that the
// two-step path across slots runs on every backend. On the cluster both
// follow the keys' own slots: give them different hash tags.
func allowAllPaths(b *backend, s *Service) map[string]allowAllFunc {
	slotOf := func(key string) uint16 { return crc16(key) }
	if b.name == "cluster" {
		slotOf = nil
	}
	return map[string]allowAllFunc{
		"AllowAll": s.AllowAll,
		"split": func(ctx context.Context, n int, limits ...KeyLimit) (RateLimitResult, error) {
			return s.allowAllIn(ctx, n, limits, slotOf)
		},
	}
}

// forEachAllowAllPath runs fn as a subtest per backend and, within it,
// per path of allowAllPaths, named for the path, with a Service over
// the backend shared by the paths.
func forEachAllowAllPath(t *testing.T, fn func(t *testing.T, b *backend, s *Service, name string, allow allowAllFunc)) {
	t.Helper()
	forEachBackend(t, func(t *testing.T, b *backend) {
		t.Parallel()
		s := b.service(t, Options{})
		for name, allow := range allowAllPaths(b, s) {
			t.Run(name, func(t *testing.T) { fn(t, b, s, name, allow) })
		}
	})
}

// peek returns key's state under l, taking nothing.
func peek(t testing.TB, s *Service, key string, l Limit) RateLimitResult {
	t.Helper()
	r, err := s.AllowN(ctxT(t), key, 0, l)
	require.NoError(t, err, "AllowN(%q, 0)", key)
	return r
}

// records returns the reservation records and marks in key's hash (not
// the time of the next purge, "r:").
func records(t testing.TB, b *backend, key string) []string {
	t.Helper()
	var recs []string
	for f := range b.client.HGetAll(ctxT(t), b.raw(gcraPrefix+key)).Val() {
		if strings.HasPrefix(f, "r:") && f != "r:" {
			recs = append(recs, f)
		}
	}
	return recs
}

// requireSlotsDiffer fails the test when keys share a cluster slot, on
// the cluster, where that would take AllowAll's one-script path.
func requireSlotsDiffer(t testing.TB, b *backend, keys ...string) {
	t.Helper()
	seen := map[uint16]string{}
	for _, k := range keys {
		slot := keySlot(b.raw(gcraPrefix + k))
		require.NotContains(t, seen, slot, "keys %q and %q share slot %d", seen[slot], k, slot)
		seen[slot] = k
	}
}

func TestAllowAll(t *testing.T) {
	t.Parallel()
	forEachAllowAllPath(t, func(t *testing.T, b *backend, s *Service, name string, allow allowAllFunc) {
		ctx := ctxT(t)
		// A token every 20 and 30 minutes: none comes back during
		// the test.
		ip := KeyLimit{"{ip}" + name, PerHour(3)}
		user := KeyLimit{"{user}" + name, PerHour(2)}
		requireSlotsDiffer(t, b, ip.Key, user.Key)
		for i := 1; i <= 2; i++ {
			r, err := allow(ctx, 1, ip, user)
			require.NoError(t, err)
			assert.True(t, r.Allowed, "request %d", i)
			assert.Equal(t, 2, r.Limit, "request %d: the tightest limit is the user's", i)
			assert.Equal(t, 2-i, r.Remaining, "request %d", i)
			assert.Zero(t, r.RetryAfter)
		}
		ipBefore := peek(t, s, ip.Key, ip.Limit)
		require.Equal(t, 1, ipBefore.Remaining)

		r, err := allow(ctx, 1, ip, user)
		require.NoError(t, err)
		assert.False(t, r.Allowed, "the user's limit is used up")
		assert.Equal(t, 2, r.Limit, "denied by the user's limit")
		assert.Zero(t, r.Remaining)
		assert.InDelta(t, float64(30*time.Minute), float64(r.RetryAfter), float64(time.Second), "one token of the user's")
		ipAfter := peek(t, s, ip.Key, ip.Limit)
		assert.Equal(t, 1, ipAfter.Remaining, "the denied request took from the IP's limit")
		assert.InDelta(t, float64(ipBefore.ResetAfter), float64(ipAfter.ResetAfter), float64(time.Second), "the IP's bucket after a denial")
		assert.Empty(t, records(t, b, ip.Key), "records left by a denial")
		assert.Empty(t, records(t, b, user.Key), "records left by a denial")

		// AllowN shares the bucket.
		r, err = s.AllowN(ctx, ip.Key, 1, ip.Limit)
		require.NoError(t, err)
		assert.True(t, r.Allowed)
		assert.Zero(t, r.Remaining, "AllowN on a key AllowAll used")

		// Denied by both: the longer wait.
		r, err = allow(ctx, 1, ip, user)
		require.NoError(t, err)
		assert.False(t, r.Allowed)
		assert.Equal(t, 2, r.Limit, "the user's 30 minutes, not the IP's 20")
		assert.InDelta(t, float64(30*time.Minute), float64(r.RetryAfter), float64(time.Second))

		// n == 0 reports the tightest state and takes nothing.
		r, err = allow(ctx, 0, ip, user)
		require.NoError(t, err)
		assert.True(t, r.Allowed)
		assert.Zero(t, r.Remaining)
		assert.Empty(t, records(t, b, ip.Key), "records left")
		assert.Empty(t, records(t, b, user.Key), "records left")
	})
}

// TestAllowAllTakesFromEveryLimitOfEveryKey: several limits per key, a
// key given twice, and a third key; the result names the tightest.
func TestAllowAllTakesFromEveryLimitOfEveryKey(t *testing.T) {
	t.Parallel()
	forEachAllowAllPath(t, func(t *testing.T, b *backend, s *Service, name string, allow allowAllFunc) {
		ctx := ctxT(t)
		a, c, d := "{a}"+name, "{c}"+name, "{d}"+name
		requireSlotsDiffer(t, b, a, c, d)
		hour, day := PerHour(10), Limit{Rate: 20, Period: 24 * time.Hour, Burst: 4}
		limits := []KeyLimit{{a, hour}, {a, day}, {c, hour}, {a, hour}, {d, Limit{Rate: 1, Period: time.Hour, Burst: 7}}}
		r, err := allow(ctx, 3, limits...)
		require.NoError(t, err)
		assert.True(t, r.Allowed)
		assert.Equal(t, 1, r.Remaining, "a's daily limit: 4-3")
		assert.Equal(t, 4, r.Limit)
		assert.Equal(t, 7, peek(t, s, a, hour).Remaining, "a's hourly limit, given twice, taken once")
		assert.Equal(t, 1, peek(t, s, a, day).Remaining)
		assert.Equal(t, 7, peek(t, s, c, hour).Remaining)
		assert.Equal(t, 4, peek(t, s, d, Limit{Rate: 1, Period: time.Hour, Burst: 7}).Remaining)

		// 2 fit all but a's daily limit: nothing is taken.
		r, err = allow(ctx, 2, limits...)
		require.NoError(t, err)
		assert.False(t, r.Allowed)
		assert.Equal(t, 4, r.Limit)
		assert.Equal(t, 7, peek(t, s, a, hour).Remaining)
		assert.Equal(t, 7, peek(t, s, c, hour).Remaining)
		assert.Equal(t, 4, peek(t, s, d, Limit{Rate: 1, Period: time.Hour, Burst: 7}).Remaining)

		// Above a burst: denied, no error, nothing written.
		r, err = allow(ctx, 8, KeyLimit{"{e}" + name, PerHour(10)}, KeyLimit{"{f}" + name, PerHour(5)})
		require.NoError(t, err)
		assert.False(t, r.Allowed)
		assert.Equal(t, 5, r.Limit)
		for _, k := range []string{"{e}" + name, "{f}" + name} {
			assert.Empty(t, b.client.HGetAll(ctx, b.raw(gcraPrefix+k)).Val(), "%s after a denial", k)
		}
	})
}

// TestAllowAllConcurrentCallersGetExactlyTheBurst: 100 callers over one
// shared limit of 50, each with a key of its own in another slot, get
// exactly 50 through; with half of them denied by their own key (so that
// they take from the shared limit and give back), every token of the
// shared limit is either taken by an admitted call or still there.
func TestAllowAllConcurrentCallersGetExactlyTheBurst(t *testing.T) {
	t.Parallel()
	const callers, burst = 100, 50
	shared := Limit{Rate: burst, Period: time.Hour} // a token every 72 s
	own := PerHour(5)
	forEachAllowAllPath(t, func(t *testing.T, b *backend, s *Service, name string, allow allowAllFunc) {
		for _, refunds := range []bool{false, true} {
			t.Run(fmt.Sprintf("give-backs=%v", refunds), func(t *testing.T) {
				ctx := ctxT(t)
				sharedKey := fmt.Sprintf("{shared}%s/%v", name, refunds)
				ownKey := func(i int) string { return fmt.Sprintf("{c%d}%s/%v", i, name, refunds) }
				requireSlotsDiffer(t, b, sharedKey, ownKey(0), ownKey(1))
				if refunds {
					for i := 0; i < callers; i += 2 {
						r, err := s.AllowN(ctx, ownKey(i), 5, own)
						require.NoError(t, err)
						require.True(t, r.Allowed)
					}
				}
				var (
					wg      sync.WaitGroup
					mu      sync.Mutex
					allowed int
				)
				for i := range callers {
					wg.Add(1)
					go func() {
						defer wg.Done()
						r, err := allow(ctx, 1, KeyLimit{sharedKey, shared}, KeyLimit{ownKey(i), own})
						if !assert.NoError(t, err) {
							return
						}
						if r.Allowed {
							assert.False(t, refunds && i%2 == 0, "caller %d admitted past its own limit", i)
							mu.Lock()
							allowed++
							mu.Unlock()
						}
					}()
				}
				wg.Wait()
				if !refunds {
					assert.Equal(t, burst, allowed, "%d concurrent callers", callers)
				}
				assert.LessOrEqual(t, allowed, burst)
				// A token given back after others did may show only once
				// the call's own duration has passed (see gcraRefundScript).
				b.waitFor(t, "shared tokens: taken by an admitted call or still there", func() bool {
					return allowed+peek(t, s, sharedKey, shared).Remaining == burst
				})
				for i := range callers {
					rem := peek(t, s, ownKey(i), own).Remaining
					assert.True(t, rem == 4 || rem == 5 || (refunds && i%2 == 0 && rem == 0), "caller %d's own key: %d left", i, rem)
				}
				assert.Empty(t, records(t, b, sharedKey), "records left")
			})
		}
	})
}

// reserve runs gcraScript as AllowAll's first step for key under l.
func reserve(t testing.TB, s *Service, token string, n int, key string, l Limit) gcraReply {
	t.Helper()
	g := s.gcraGroups(n, []KeyLimit{{key, l}}, nil)[0]
	g.args[1], g.args[2] = token, 60_000
	replies := make([]gcraReply, 1)
	require.NoError(t, firstErr(s.evalGroups(ctxT(t), gcraArgs, []*gcraGroup{g}, replies)), "reserve")
	return replies[0]
}

// giveBack runs gcraRefundScript for token on key, keeping a mark for
// keep ms.
func giveBack(t testing.TB, s *Service, token string, keep int, key string) {
	t.Helper()
	g := &gcraGroup{keys: []string{s.prefix + gcraPrefix + key}, args: []any{token, keep}}
	require.NoError(t, firstErr(s.evalGroups(ctxT(t), gcraRefundArgs, []*gcraGroup{g}, nil)), "give back")
}

// TestGCRAGiveBack: what the second step gives back, as time passes and
// other calls take and give back. A token every second, ten at once.
func TestGCRAGiveBack(t *testing.T) {
	t.Parallel()
	l := Limit{Rate: 1, Period: time.Second, Burst: 10}
	take := func(t *testing.T, s *Service, n int) {
		t.Helper()
		_, err := s.AllowN(ctxT(t), "x", n, l)
		require.NoError(t, err)
	}
	tests := []struct {
		name string
		run  func(t *testing.T, b *backend, s *Service)
		want int // Remaining afterwards
	}{
		{"at once", func(t *testing.T, b *backend, s *Service) {
			reserve(t, s, "k", 3, "x", l)
			giveBack(t, s, "k", 0, "x")
		}, 10},
		{"after one token came back", func(t *testing.T, b *backend, s *Service) {
			reserve(t, s, "k", 3, "x", l)
			b.pass(time.Second)
			giveBack(t, s, "k", 0, "x")
		}, 10},
		{"behind other takes", func(t *testing.T, b *backend, s *Service) {
			take(t, s, 4)
			reserve(t, s, "k", 3, "x", l)
			b.pass(2 * time.Second)
			giveBack(t, s, "k", 0, "x")
		}, 8},
		{"after others gave back and its tokens came back", func(t *testing.T, b *backend, s *Service) {
			// j takes [0s, 2s), k [2s, 4s); j gives back at once, so k's
			// tokens are [0s, 2s) and back by 3s, when 5 are taken.
			reserve(t, s, "j", 2, "x", l)
			reserve(t, s, "k", 2, "x", l)
			giveBack(t, s, "j", 0, "x")
			b.pass(3 * time.Second)
			take(t, s, 5)
			giveBack(t, s, "k", 0, "x")
		}, 5},
		{"sent twice", func(t *testing.T, b *backend, s *Service) {
			take(t, s, 4)
			reserve(t, s, "k", 3, "x", l)
			giveBack(t, s, "k", 0, "x")
			giveBack(t, s, "k", 0, "x")
		}, 6},
		{"reservation sent twice", func(t *testing.T, b *backend, s *Service) {
			first := reserve(t, s, "k", 3, "x", l)
			again := reserve(t, s, "k", 3, "x", l)
			assert.True(t, first.allowed() && again.allowed())
			assert.Equal(t, int64(7), again[1], "Remaining reported by the reservation sent again")
		}, 7},
		{"mark before the reservation", func(t *testing.T, b *backend, s *Service) {
			giveBack(t, s, "k", 60_000, "x")
			reserve(t, s, "k", 3, "x", l)
			assert.Len(t, records(t, b, "x"), 1, "the mark")
			pttl := b.client.PTTL(ctxT(t), b.raw("gcra:x")).Val()
			assert.True(t, pttl > 0 && pttl <= time.Minute, "PTTL %v of a hash holding only a mark", pttl)
		}, 10},
		{"reset between", func(t *testing.T, b *backend, s *Service) {
			reserve(t, s, "k", 3, "x", l)
			require.NoError(t, s.ResetRateLimit(ctxT(t), "x"))
			take(t, s, 2)
			giveBack(t, s, "k", 0, "x")
		}, 8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := newBackend(t, "miniredis")
			s := b.service(t, Options{})
			tt.run(t, b, s)
			assert.Equal(t, tt.want, peek(t, s, "x", l).Remaining)
		})
	}
}

// TestGCRAGiveBackOnEveryBackend: the second step's scripts as real Redis
// runs them, where time cannot be stopped: limits whose tokens do not
// come back during the test.
func TestGCRAGiveBackOnEveryBackend(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		t.Parallel()
		s := b.service(t, Options{})
		l := PerHour(10)
		_, err := s.AllowN(ctxT(t), "x", 4, l)
		require.NoError(t, err)
		r := reserve(t, s, "j", 3, "x", l)
		assert.True(t, r.allowed())
		assert.Equal(t, int64(3), r[1])
		assert.Equal(t, int64(3), reserve(t, s, "j", 3, "x", l)[1], "sent again: nothing more taken")
		assert.Equal(t, 3, peek(t, s, "x", l).Remaining)
		reserve(t, s, "k", 2, "x", l)
		giveBack(t, s, "j", 0, "x")
		giveBack(t, s, "j", 0, "x")
		assert.Equal(t, 4, peek(t, s, "x", l).Remaining, "j given back once")
		giveBack(t, s, "k", 0, "x")
		assert.Equal(t, 6, peek(t, s, "x", l).Remaining, "k given back")
		assert.Empty(t, records(t, b, "x"))
		giveBack(t, s, "m", 60_000, "x")
		assert.Equal(t, 6, peek(t, s, "x", l).Remaining, "a mark gives nothing back")
		reserve(t, s, "m", 1, "x", l)
		assert.Equal(t, 6, peek(t, s, "x", l).Remaining, "a reservation after its mark takes nothing")
	})
}

// TestAllowAllDropsStaleRecords: records of calls that never finished
// (the process died between the two steps) are dropped by later
// reservations once there are many.
func TestAllowAllDropsStaleRecords(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{})
	l := PerHour(1000)
	for i := range 200 {
		reserve(t, s, fmt.Sprintf("t%03d", i), 1, "x", l)
	}
	require.Len(t, records(t, b, "x"), 200)
	b.pass(2 * time.Minute) // past the records' 60 s
	before := peek(t, s, "x", l).Remaining
	reserve(t, s, "late", 1, "x", l)
	assert.Equal(t, []string{"r:late"}, records(t, b, "x"), "records after the purge")
	assert.True(t, b.mr.Exists(b.raw("gcra:x")))
	assert.Equal(t, before-1, peek(t, s, "x", l).Remaining, "stale records dropped, tokens kept")
}

// scriptCall returns a predicate matching a call of script on key (as
// its first key), by SHA or by source.
func scriptCall(script luaScript, key string) func(args []string) bool {
	return func(args []string) bool {
		return scriptOn(key)(args) && (args[1] == script.sha || args[1] == script.src)
	}
}

// TestAllowAllWithALostReply: go-redis sends a script again when its reply
// is lost; nothing is taken or given back twice.
func TestAllowAllWithALostReply(t *testing.T) {
	t.Parallel()
	forEachLossyBackend(t, func(t *testing.T, b *backend, l *lostReplies, s *Service) {
		ctx := ctxT(t)
		lim := PerHour(5)
		paths := allowAllPaths(b, s)
		// Loaded on every master, so that no NOSCRIPT makes a call twice.
		for _, src := range []string{gcraLua, gcraRefundLua} {
			require.NoError(t, s.Client().ScriptLoad(ctx, src).Err())
		}
		// One script on a single node: it is not sent again, and the call
		// fails with the fallback; across slots, the reservation is.
		t.Run("AllowAll", func(t *testing.T) {
			ip, user := KeyLimit{"{ip}1", lim}, KeyLimit{"{user}1", lim}
			requireSlotsDiffer(t, b, ip.Key, user.Key)
			l.arm(loseAndClose, scriptCall(gcraArgs, b.raw(gcraPrefix+ip.Key)))
			r, err := s.AllowAll(ctx, 2, ip, user)
			require.Equal(t, int64(1), l.lost.Load(), "replies lost")
			if b.name == "cluster" {
				require.NoError(t, err)
				assert.GreaterOrEqual(t, l.seen.Load(), int64(2), "the reservation sent again")
			} else {
				require.Error(t, err)
				assert.Equal(t, int64(1), l.seen.Load(), "the script sent again")
				require.Eventually(t, s.IsConnected, 5*time.Second, 5*time.Millisecond)
			}
			assert.True(t, r.Allowed)
			assert.Equal(t, 3, peek(t, s, ip.Key, lim).Remaining, "taken once from ip")
			assert.Equal(t, 3, peek(t, s, user.Key, lim).Remaining, "taken once from user")
		})
		t.Run("reservation", func(t *testing.T) {
			ip, user := KeyLimit{"{ip}2", lim}, KeyLimit{"{user}2", lim}
			l.lost.Store(0)
			l.arm(loseAndClose, scriptCall(gcraArgs, b.raw(gcraPrefix+ip.Key)))
			r, err := paths["split"](ctx, 2, ip, user)
			require.NoError(t, err)
			require.Equal(t, int64(1), l.lost.Load(), "replies lost")
			assert.GreaterOrEqual(t, l.seen.Load(), int64(2), "the reservation sent again")
			assert.True(t, r.Allowed)
			assert.Equal(t, 3, r.Remaining)
			assert.Equal(t, 3, peek(t, s, ip.Key, lim).Remaining, "taken once from ip")
			assert.Empty(t, records(t, b, ip.Key))
		})
		t.Run("give back", func(t *testing.T) {
			ip, user := KeyLimit{"{ip}3", lim}, KeyLimit{"{user}3", lim}
			_, err := s.AllowN(ctx, ip.Key, 2, lim)
			require.NoError(t, err)
			_, err = s.AllowN(ctx, user.Key, 5, lim)
			require.NoError(t, err)
			l.lost.Store(0)
			l.arm(loseAndClose, scriptCall(gcraRefundArgs, b.raw(gcraPrefix+ip.Key)))
			r, err := paths["split"](ctx, 1, ip, user)
			require.NoError(t, err)
			assert.False(t, r.Allowed)
			require.Equal(t, int64(1), l.lost.Load(), "replies lost")
			assert.GreaterOrEqual(t, l.seen.Load(), int64(2), "the give-back sent again")
			assert.Equal(t, 3, peek(t, s, ip.Key, lim).Remaining, "given back once to ip")
			assert.Empty(t, records(t, b, ip.Key))
		})
		t.Run("reservation timed out", func(t *testing.T) {
			ip, user := KeyLimit{"{ip}4", lim}, KeyLimit{"{user}4", lim}
			l.lost.Store(0)
			l.arm(loseAndHold, scriptCall(gcraArgs, b.raw(gcraPrefix+ip.Key)))
			short, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			start := time.Now()
			r, err := paths["split"](short, 2, ip, user)
			require.Error(t, err)
			assert.ErrorIs(t, err, context.DeadlineExceeded)
			require.Equal(t, int64(1), l.lost.Load(), "the reservation ran and its reply was lost (%v)", err)
			assert.True(t, r.Allowed, "the fallback")
			require.Eventually(t, s.IsConnected, 5*time.Second, 5*time.Millisecond)
			assert.Less(t, time.Since(start), 1*time.Second+3*time.Second+5*time.Second, "ctx and Options.Timeout, with room")
			assert.Equal(t, 5, peek(t, s, ip.Key, lim).Remaining, "ip given back")
			assert.Equal(t, 5, peek(t, s, user.Key, lim).Remaining, "user given back")
			assert.Len(t, records(t, b, ip.Key), 1, "the mark that stops the reservation if it runs late")
		})
	})
}

// TestAllowAllKeysShareABucketWithAllowN: the hash AllowAll writes is
// the one AllowN reads, with the same field for the same limit.
func TestAllowAllKeysShareABucketWithAllowN(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		t.Parallel()
		s := b.service(t, Options{})
		ctx := ctxT(t)
		_, err := s.AllowAll(ctx, 1, KeyLimit{"a", PerMinute(3)}, KeyLimit{"b", PerHour(4)})
		require.NoError(t, err)
		for key, field := range map[string]string{"a": "3/60/3", "b": "4/3600/4"} {
			v, err := b.client.HGet(ctx, b.raw("gcra:"+key), field).Result()
			require.NoError(t, err, "field %s of gcra:%s", field, key)
			assert.Regexp(t, `^\d+ \d+(\.\d+)?$`, v)
		}
	})
}

// TestAllowAllWithAnEndedContext: a ctx that ended before the call sends
// nothing, so there is nothing to give back and no mark to leave.
func TestAllowAllWithAnEndedContext(t *testing.T) {
	t.Parallel()
	forEachAllowAllPath(t, func(t *testing.T, b *backend, s *Service, name string, allow allowAllFunc) {
		ctx, cancel := context.WithCancel(ctxT(t))
		cancel()
		ip, user := KeyLimit{"{ip}" + name, PerHour(5)}, KeyLimit{"{user}" + name, PerHour(5)}
		r, err := allow(ctx, 1, ip, user)
		require.ErrorIs(t, err, context.Canceled)
		assert.True(t, r.Allowed, "the fallback")
		for _, k := range []string{ip.Key, user.Key} {
			assert.Zero(t, b.client.Exists(ctxT(t), b.raw(gcraPrefix+k)).Val(), "gcra:%s written", k)
		}
	})
}

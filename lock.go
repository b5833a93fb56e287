package redisservice

import (
	"context"
	crand "crypto/rand"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/vevurn/redisservice/internal/deadline"
	"github.com/vevurn/redisservice/internal/telemetry"
)

// Lock is a lock on one key held through [Service.TryLock] or
// [Service.Lock], with a fencing token. Its methods are safe for
// concurrent use. The zero value is not usable.
type Lock struct {
	s     *Service
	key   string // the caller's key
	lock  string // the lock's key, as stored
	fence string // its fencing counter's key, in the same cluster slot
	value string // "<owner id> <token>": what the lock's key holds
	token int64
}

const (
	// lockBackoffMin and lockBackoffMax bound the pause of Lock between
	// two tries; each pause doubles, is jittered, and never passes the
	// holder's remaining TTL.
	lockBackoffMin = 4 * time.Millisecond
	lockBackoffMax = 128 * time.Millisecond
)

// TryLock takes the lock on key for ttl (at least 1 ms) if it is free, in
// one round trip, and returns it with a fencing token: 1 for the first
// holder of key, and strictly greater for every later one. It fails with
// [ErrLockHeld] when another holder has the lock. Pass the token to the
// resource the lock guards, so that it can refuse the writes of a holder
// whose lock expired while it was paused.
//
// The lock is "lock:{key}" (after [Options.KeyPrefix]), and its counter
// "lock:{key}:fence" beside it, in the same cluster slot; the counter has
// no TTL, so that tokens keep growing. Both lie in a reserved namespace.
// A key whose braces would split the two across slots fails with
// [ErrInvalidKey], an empty key too, and a ttl below 1 ms with
// [ErrInvalidTTL]. A request re-sent after a lost reply takes the lock
// once, with one token. A call that fails after its request was sent may
// leave the lock taken, until ttl, by no one.
func (s *Service) TryLock(ctx context.Context, key string, ttl time.Duration) (_ *Lock, err error) {
	const op = "trylock"
	ctx, scope := s.tel.Begin(ctx, op, key)
	defer scope.End(ctx, &err)
	l, err := s.newLock(op, key, ttl)
	if err != nil {
		return nil, err
	}
	if _, err := s.acquire(ctx, op, l, ttl); err != nil {
		return nil, err
	}
	if l.token == 0 {
		s.tel.LockOutcome(ctx, telemetry.LockHeld)
		return nil, wrapOp(op, key, ErrLockHeld)
	}
	s.tel.LockOutcome(ctx, telemetry.LockAcquired)
	return l, nil
}

// Lock is [Service.TryLock] that waits until the lock is free, or ctx
// ends (then it returns ctx's error). It does not poll Redis in a tight
// loop: it tries again after a jittered pause that starts at 4 ms and
// doubles up to 128 ms, and never lasts longer than the holder's
// remaining TTL, so a lock left to expire is taken over at once. Every
// try is one round trip. Other errors end the wait. In telemetry the call
// is one operation, and each try an event of its span.
func (s *Service) Lock(ctx context.Context, key string, ttl time.Duration) (_ *Lock, err error) {
	const op = "lock"
	ctx, scope := s.tel.Begin(ctx, op, key)
	defer scope.End(ctx, &err)
	l, err := s.newLock(op, key, ttl)
	if err != nil {
		return nil, err
	}
	pause := lockBackoffMin
	for {
		// Every try uses l's owner id, so one whose reply was lost
		// leaves a lock that the next try finds its own.
		held, err := s.acquire(ctx, op, l, ttl)
		if err != nil {
			return nil, err
		}
		if l.token != 0 {
			s.tel.LockOutcome(ctx, telemetry.LockAcquired)
			return l, nil
		}
		wait := pause
		if held > 0 && held < wait {
			wait = held
		}
		if !deadline.Sleep(ctx, wait/2+rand.N(wait/2+1)) {
			s.tel.LockOutcome(ctx, telemetry.LockHeld)
			return nil, wrapOp(op, key, ctx.Err())
		}
		pause = min(2*pause, lockBackoffMax)
	}
}

// Token returns the lock's fencing token: strictly greater than that of
// every earlier holder of its key.
func (l *Lock) Token() int64 { return l.token }

// Refresh sets the lock's TTL to ttl (at least 1 ms), in one round trip.
// It fails with [ErrLockLost] when another holder has taken the key since
// this lock was taken. A lock that expired and that no one took since is
// taken again, with the same token: no other holder could have relied on
// it in between.
func (l *Lock) Refresh(ctx context.Context, ttl time.Duration) (err error) {
	const op = "refreshlock"
	ctx, scope := l.s.tel.Begin(ctx, op, l.key)
	defer scope.End(ctx, &err)
	if err := checkTTL(ttl); err != nil {
		return invalid(op, l.key, err)
	}
	return l.run(ctx, op, telemetry.LockRefreshed, refreshLockScript, ttl.Milliseconds())
}

// Unlock releases the lock, in one round trip, if this holder still has
// it: it never releases another holder's lock, and then fails with
// [ErrLockLost]. A lock that expired and that no one took since is free
// already: Unlock returns nil, and so does a repeated Unlock.
func (l *Lock) Unlock(ctx context.Context) (err error) {
	const op = "unlock"
	ctx, scope := l.s.tel.Begin(ctx, op, l.key)
	defer scope.End(ctx, &err)
	return l.run(ctx, op, telemetry.LockReleased, unlockScript)
}

// newLock validates TryLock's arguments and returns an unheld Lock with a
// new owner id.
func (s *Service) newLock(op, key string, ttl time.Duration) (*Lock, error) {
	if key == "" {
		return nil, invalid(op, key, ErrInvalidKey)
	}
	if err := checkTTL(ttl); err != nil {
		return nil, invalid(op, key, err)
	}
	lock := s.key(lockPrefix + "{" + key + "}")
	if !sameSlotSuffix(lock) {
		return nil, invalid(op, key, fmt.Errorf("%w: its braces would put the lock and its fencing counter in two cluster slots", ErrInvalidKey))
	}
	return &Lock{s: s, key: key, lock: lock, fence: lock + ":fence", value: ownerID()}, nil
}

// sameSlotSuffix reports whether k and k followed by anything hash to
// the same cluster slot: k has a non-empty hash tag ("{...}"), so that
// the rest is not hashed.
func sameSlotSuffix(k string) bool {
	i := strings.IndexByte(k, '{')
	if i < 0 {
		return false
	}
	j := strings.IndexByte(k[i+1:], '}')
	return j > 0
}

// acquire runs acquireLockScript for l and, when it took the lock, sets
// l's token and value. held is the holder's remaining TTL when another
// holder has the lock (-1: none), and 0 when l took it.
func (s *Service) acquire(ctx context.Context, op string, l *Lock, ttl time.Duration) (held time.Duration, err error) {
	owner := l.value
	if i := strings.IndexByte(owner, ' '); i >= 0 {
		owner = owner[:i]
	}
	reply, err := call(s, ctx, op, l.key, func(ctx context.Context) ([]int64, error) {
		return acquireLockScript.Run(ctx, s.rdb, []string{l.lock, l.fence}, owner, ttl.Milliseconds()).Int64Slice()
	})
	if err != nil {
		return 0, err
	}
	if len(reply) != 2 {
		return 0, s.fail(ctx, op, l.key, fmt.Errorf("%w: lock script reply has %d values, want 2", ErrDecode, len(reply)))
	}
	if reply[0] == 0 {
		return time.Duration(reply[1]) * time.Millisecond, nil
	}
	l.token = reply[0]
	l.value = owner + " " + strconv.FormatInt(l.token, 10)
	return 0, nil
}

// run runs script, a compare-and-something of l, which replies 1 when l
// held the lock, else 0, and records the lock outcome: done, or lost.
func (l *Lock) run(ctx context.Context, op, done string, script *redis.Script, args ...any) error {
	args = append([]any{l.value, l.token}, args...)
	n, err := call(l.s, ctx, op, l.key, func(ctx context.Context) (int64, error) {
		return script.Run(ctx, l.s.rdb, []string{l.lock, l.fence}, args...).Int64()
	})
	switch {
	case err != nil:
		return err
	case n != 1:
		l.s.tel.LockOutcome(ctx, telemetry.LockLost)
		return wrapOp(op, l.key, ErrLockLost)
	}
	l.s.tel.LockOutcome(ctx, done)
	return nil
}

// acquireLockScript takes a lock. KEYS[1]: the lock, KEYS[2]: its fencing
// counter. ARGV[1]: the owner id, ARGV[2]: the TTL in ms. The lock holds
// "<owner id> <token>". If the owner id holds it already (a request
// re-sent after a lost reply), its TTL is set again and its token
// returned: the counter moves once per holder. It returns {token, 0}
// when the caller holds the lock, else {0, the holder's PTTL}.
var acquireLockScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v then
  local sp = string.find(v, ' ', 1, true)
  if sp and string.sub(v, 1, sp - 1) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {tonumber(string.sub(v, sp + 1)), 0}
  end
  return {0, redis.call('PTTL', KEYS[1])}
end
local t = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. t, 'PX', ARGV[2])
return {t, 0}
`)

// unlockScript deletes the lock if it holds ARGV[1] ("<owner id>
// <token>"). It replies 1 when the caller held it or it is free and the
// counter still is ARGV[2], the caller's token (no one took it since: a
// re-sent unlock, or a lock that expired), else 0.
var unlockScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
if not v and redis.call('GET', KEYS[2]) == ARGV[2] then
  return 1
end
return 0
`)

// refreshLockScript sets the lock's TTL to ARGV[3] ms if it holds ARGV[1],
// or takes it again if it is free and the counter still is ARGV[2], the
// caller's token. It replies 1 then, else 0.
var refreshLockScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
if not v and redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
  return 1
end
return 0
`)

// ownerID returns a new random owner id for a lock.
func ownerID() string { return crand.Text() }

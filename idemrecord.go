package redisservice

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Claim results: what the claim script found at a key.
const (
	claimClaimed  = 1 // the key was free: the caller runs the handler
	claimConflict = 2 // the same request is in flight
	claimMismatch = 3 // another request holds the key
	claimReplay   = 4 // the same request's response is stored
)

// idemRecord is one request's record: "R<fp><owner>" while it runs (a
// lease), "D<fp><response>" once its response is stored.
type idemRecord struct {
	s     *Service
	key   string    // the Idempotency-Key, for errors and logs
	keys  [1]string // the record's key in Redis, as the scripts take it
	fp    string    // the request's fingerprint, 64 hex digits
	owner string    // this request's owner id

	// The scripts' arguments, boxed once for every round trip: claim's,
	// and store's, whose third is the response.
	claimArgs [3]any
	storeArgs [4]any
}

// init sets up the record of the request of fingerprint fp, by owner, at
// id (before the key prefix).
func (rec *idemRecord) init(s *Service, key, id, fp, owner string) {
	rec.s, rec.key, rec.fp, rec.owner = s, key, fp, owner
	rec.keys[0] = s.key(id)
	rec.claimArgs[0], rec.claimArgs[1] = fp, owner
	rec.storeArgs[0], rec.storeArgs[1] = rec.claimArgs[0], rec.claimArgs[1]
}

// running is the record's value while this request runs.
func (rec *idemRecord) running() string { return "R" + rec.fp + rec.owner }

// claim takes the key for this request with a lease of leaseMS (int64 ms),
// or reports what holds it: one round trip. With claimReplay it returns
// the stored response.
func (rec *idemRecord) claim(ctx context.Context, leaseMS any) (int64, string, error) {
	const op = "idempotency"
	s := rec.s
	rec.claimArgs[2] = leaseMS
	reply, err := call(s, ctx, op, rec.key, func(ctx context.Context) ([]any, error) {
		return idemClaimScript.Run(ctx, s.rdb, rec.keys[:], rec.claimArgs[:]...).Slice()
	})
	if err != nil {
		return 0, "", err
	}
	code, ok := reply[0].(int64)
	if !ok || code < claimClaimed || code > claimReplay || (code == claimReplay && len(reply) < 2) {
		return 0, "", s.fail(ctx, op, rec.key, fmt.Errorf("%w: idempotency claim reply %v", ErrDecode, reply[0]))
	}
	if code == claimReplay {
		stored, _ := reply[1].(string)
		return code, stored, nil
	}
	return code, "", nil
}

// store keeps the response for ttlMS (int64 ms), if this request still
// holds the key: one round trip.
func (rec *idemRecord) store(ctx context.Context, response string, ttlMS any) error {
	const op = "idempotency"
	s := rec.s
	rec.storeArgs[2], rec.storeArgs[3] = response, ttlMS
	n, err := call(s, ctx, op, rec.key, func(ctx context.Context) (int64, error) {
		return idemStoreScript.Run(ctx, s.rdb, rec.keys[:], rec.storeArgs[:]...).Int64()
	})
	if err == nil && n != 1 {
		// Redis answered: a lost lease says nothing of its health, so it
		// is logged but does not mark Redis down (as s.fail would).
		err = wrapOp(op, rec.key, fmt.Errorf("%w: the in-flight lease expired before the response was stored", ErrLockLost))
		s.stats.errors.Add(1)
		s.logFailure(ctx, op, rec.key, err)
	}
	return err
}

// free deletes the record if it still holds value.
func (rec *idemRecord) free(ctx context.Context, value string) {
	s := rec.s
	_, _ = call(s, ctx, "idempotency", rec.key, func(ctx context.Context) (int64, error) {
		return idemFreeScript.Run(ctx, s.rdb, rec.keys[:], value).Int64()
	})
}

// leaseKeeper renews a record's lease every third of it, from start until
// stop, on a timer rather than a goroutine of its own. The zero value is
// ready for start.
type leaseKeeper struct {
	rec     *idemRecord
	every   time.Duration
	leaseMS any
	t       *time.Timer
	// wg counts the pending timer or the running renewal: at most one.
	wg sync.WaitGroup
	mu sync.Mutex // guards stopped and the timer's re-arming
	// stopped is set by stop; no renewal starts after it.
	stopped bool
}

// start starts renewing rec's lease (of leaseMS int64 ms) every third of
// lease.
func (k *leaseKeeper) start(rec *idemRecord, lease time.Duration, leaseMS any) {
	k.rec, k.every, k.leaseMS = rec, lease/3, leaseMS
	k.wg.Add(1)
	k.mu.Lock() // the first renewal may run before AfterFunc returns
	k.t = time.AfterFunc(k.every, k.renew)
	k.mu.Unlock()
}

// renew renews the lease once, and re-arms the timer unless stopped.
func (k *leaseKeeper) renew() {
	defer k.wg.Done()
	k.mu.Lock()
	stopped := k.stopped
	k.mu.Unlock()
	if stopped {
		return
	}
	rec, s := k.rec, k.rec.s
	_, _ = call(s, context.Background(), "idempotency", rec.key, func(ctx context.Context) (int64, error) {
		return idemRenewScript.Run(ctx, s.rdb, rec.keys[:], rec.running(), k.leaseMS).Int64()
	})
	k.mu.Lock()
	if !k.stopped {
		k.wg.Add(1) // while this renewal still counts: never from zero during stop's Wait
		k.t.Reset(k.every)
	}
	k.mu.Unlock()
}

// stop stops the renewals, and returns once none runs.
func (k *leaseKeeper) stop() {
	k.mu.Lock()
	k.stopped = true
	if k.t.Stop() {
		k.wg.Done() // the pending renewal will not run
	}
	k.mu.Unlock()
	k.wg.Wait()
}

// idemClaimScript claims KEYS[1] for the request of fingerprint ARGV[1]
// and owner ARGV[2] with a lease of ARGV[3] ms. A claim re-sent after a
// lost reply finds its own mark and is claimed again. It returns
// {claimClaimed}, {claimConflict}, {claimMismatch} or {claimReplay,
// response}.
var idemClaimScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], 'R' .. ARGV[1] .. ARGV[2], 'PX', ARGV[3])
  return {1}
end
if string.sub(v, 2, 65) ~= ARGV[1] then
  return {3}
end
local kind = string.sub(v, 1, 1)
if kind == 'D' then
  return {4, string.sub(v, 66)}
end
if v == 'R' .. ARGV[1] .. ARGV[2] then
  return {1}
end
return {2}
`)

// idemStoreScript replaces this request's mark at KEYS[1] (fingerprint
// ARGV[1], owner ARGV[2]) with its response ARGV[3] for ARGV[4] ms. It
// returns 1 when stored (or stored already: a re-sent store), else 0.
var idemStoreScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == 'R' .. ARGV[1] .. ARGV[2] then
  redis.call('SET', KEYS[1], 'D' .. ARGV[1] .. ARGV[3], 'PX', ARGV[4])
  return 1
end
if v == 'D' .. ARGV[1] .. ARGV[3] then
  return 1
end
return 0
`)

// idemFreeScript deletes KEYS[1] if it holds ARGV[1].
var idemFreeScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

// idemRenewScript sets KEYS[1]'s TTL to ARGV[2] ms if it holds ARGV[1].
var idemRenewScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
`)

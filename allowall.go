package redisservice

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// KeyLimit is one key's limit in [Service.AllowAll]: Limit applied to the
// bucket of Key, the bucket [Service.AllowN] uses for the same key and
// limit.
type KeyLimit struct {
	// Key names the bucket; not empty. Its state is the hash "gcra:<Key>"
	// (after [Options.KeyPrefix]), as for AllowN.
	Key string

	// Limit is the limit applied to Key; see [Limit] for its range.
	Limit Limit
}

// maxRecordKeep bounds how long a reservation across cluster slots is
// remembered in Redis after it was made (see reserveAll).
const maxRecordKeep = time.Hour

// AllowAll takes n tokens from every key's limit, or none: allowed only
// when each limit has room for n, and then n is taken from all; a denied
// request takes nothing from any. n == 0 only reports the state. Its keys
// are AllowN's: AllowAll(ctx, n, KeyLimit{k, l}) and AllowN(ctx, k, n, l)
// share one bucket. A key and limit given twice count once. The result
// describes the tightest limit, as AllowN's does; invalid input, retries,
// fast failure and fallbacks are AllowN's too.
//
// On a single node, and on a cluster when every key hashes to one slot
// (give them a common hash tag, such as "{login}"), it is one script in
// one round trip, atomic. Across slots it takes two round trips, to each
// slot's node in parallel: the first takes the tokens in each slot that
// has room for them, recording what it took under a random token; the
// second drops the records if every slot took, and otherwise gives back
// what the slots took. Meanwhile, a few milliseconds, other callers see
// those tokens taken (and may be denied for want of them); no caller is
// ever admitted beyond a limit. A reply lost on the way is made up for by
// sending the script again, which the record makes safe. When Redis
// cannot say whether a slot took, the call fails and gives back what may
// have been taken, waiting up to [Options.Timeout] past ctx for it.
// docs/rate-limits.md ("Several keys") has the details.
func (s *Service) AllowAll(ctx context.Context, n int, limits ...KeyLimit) (RateLimitResult, error) {
	return s.allowAllIn(ctx, n, limits, nil)
}

// allowAllIn is AllowAll with the keys' slots given by slotOf, or when it
// is nil, as the Service's client places them.
func (s *Service) allowAllIn(ctx context.Context, n int, limits []KeyLimit, slotOf func(string) uint16) (RateLimitResult, error) {
	const op = "ratelimit"
	if err := checkAllowAllArgs(n, limits); err != nil {
		return RateLimitResult{}, invalid(op, allowAllKey(limits), err)
	}
	if len(limits) == 1 {
		return s.AllowN(ctx, limits[0].Key, n, limits[0].Limit)
	}
	groups := s.gcraGroups(n, limits, slotOf)
	key := allowAllKey(limits)
	var r RateLimitResult
	_, err := call(s, ctx, op, key, func(ctx context.Context) (struct{}, error) {
		var err error
		r, err = s.allowAll(ctx, key, n, limits, groups)
		return struct{}{}, err
	})
	if err != nil {
		flat := make([]Limit, len(limits))
		for i, kl := range limits {
			flat[i] = kl.Limit
		}
		r, _ = s.allowFallback(n, flat)
		return r, err
	}
	s.tel.RateLimited(ctx, r.Allowed, false)
	return r, nil
}

// checkAllowAllArgs validates the arguments of AllowAll.
func checkAllowAllArgs(n int, limits []KeyLimit) error {
	if len(limits) == 0 {
		return fmt.Errorf("%w: no limit", ErrInvalidArgument)
	}
	for _, kl := range limits {
		if err := checkAllowArgs(kl.Key, n, []Limit{kl.Limit}); err != nil {
			return err
		}
	}
	return nil
}

// allowAllKey names the keys of limits in errors and logs.
func allowAllKey(limits []KeyLimit) string {
	keys := make([]string, len(limits))
	for i, kl := range limits {
		keys[i] = kl.Key
	}
	return strings.Join(keys, ",")
}

// gcraGroup is one call of gcraScript: keys in one cluster slot.
type gcraGroup struct {
	keys  []string // the hashes, with their prefixes
	args  []any    // the script's ARGV; the token and keep are set per call
	which []int    // each of the script's limits, in order, as an index in the caller's KeyLimits
}

// gcraGroups sorts limits into the calls of gcraScript that decide them,
// one per slot (by slotOf, or when it is nil, one on a single node and
// one per cluster slot otherwise). Each key's limits are given together,
// once each.
func (s *Service) gcraGroups(n int, limits []KeyLimit, slotOf func(string) uint16) []*gcraGroup {
	if slotOf == nil && s.cluster {
		slotOf = keySlot
	}
	type bucket struct {
		key   string
		which []int
	}
	buckets := make([]bucket, 0, len(limits))
	for i, kl := range limits {
		// A linear search: a call names a few keys.
		j := 0
		for j < len(buckets) && buckets[j].key != kl.Key {
			j++
		}
		if j == len(buckets) {
			buckets = append(buckets, bucket{key: kl.Key})
		}
		b := &buckets[j]
		dup := false
		for _, w := range b.which {
			dup = dup || sameBucket(limits[w].Limit, kl.Limit)
		}
		if !dup {
			b.which = append(b.which, i)
		}
	}
	var (
		groups []*gcraGroup
		slots  []uint16
	)
	for _, b := range buckets {
		key := s.gcraKey(b.key)
		var slot uint16
		if slotOf != nil {
			slot = slotOf(key)
		}
		gi := 0
		for gi < len(groups) && slots[gi] != slot {
			gi++
		}
		if gi == len(groups) {
			groups = append(groups, &gcraGroup{args: []any{n, "", 0}})
			slots = append(slots, slot)
		}
		g := groups[gi]
		g.keys = append(g.keys, key)
		g.args = append(g.args, len(b.which))
		for _, w := range b.which {
			l := limits[w].Limit
			g.args = append(g.args, l.Rate, l.Period.Seconds(), l.burst())
			g.which = append(g.which, w)
		}
	}
	return groups
}

// sameBucket reports whether a and b are one field of a key's hash.
func sameBucket(a, b Limit) bool {
	return a.Rate == b.Rate && a.Period.Seconds() == b.Period.Seconds() && a.burst() == b.burst()
}

// allowAll decides AllowAll's groups: in one script when there is one,
// or else by reserveAll (a peek needs no reservation).
func (s *Service) allowAll(ctx context.Context, key string, n int, limits []KeyLimit, groups []*gcraGroup) (RateLimitResult, error) {
	replies := make([]gcraReply, len(groups))
	if len(groups) == 1 {
		if err := s.evalOnce(ctx, gcraArgs, groups[0].keys, replies[0][:], groups[0].args); err != nil {
			return RateLimitResult{}, err
		}
		if err := replies[0].check(len(groups[0].which)); err != nil {
			return RateLimitResult{}, err
		}
		return tightest(limits, groups, replies, nil), nil
	}
	if n == 0 {
		if err := firstErr(s.evalGroups(ctx, gcraArgs, groups, replies)); err != nil {
			return RateLimitResult{}, err
		}
		return tightest(limits, groups, replies, nil), nil
	}
	return s.reserveAll(ctx, key, limits, groups, replies)
}

// reserveAll decides groups in different slots in two steps. Each group's
// script takes n tokens if all its limits have room, recording what it
// took under a token of this call. If every group took, the records are
// dropped; otherwise every group that took, or may have (no reply), gives
// back with gcraRefundScript what has not come back by itself. The
// scripts are safe to send again (go-redis does after a lost reply): the
// record tells a reservation that ran already. The second step is bounded
// by Options.Timeout even when ctx has ended, since tokens left taken
// would deny other callers.
func (s *Service) reserveAll(ctx context.Context, key string, limits []KeyLimit, groups []*gcraGroup, replies []gcraReply) (RateLimitResult, error) {
	if err := ctx.Err(); err != nil {
		return RateLimitResult{}, err // nothing sent, nothing to give back
	}
	token := newWriteToken()
	keep := min(time.Duration(writeTokenKeep(ctx))*time.Millisecond+s.opts.Timeout, maxRecordKeep).Milliseconds()
	for _, g := range groups {
		g.args[1], g.args[2] = token, keep
	}
	errs := s.evalGroups(ctx, gcraArgs, groups, replies)
	denied, unknown := -1, false
	for i, g := range groups {
		if errs[i] == nil {
			errs[i] = replies[i].check(len(g.which))
		}
		switch {
		case errs[i] != nil:
			unknown = true
		case !replies[i].allowed() && (denied < 0 || replies[i][2] > replies[denied][2]):
			denied = i
		}
	}
	after, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opts.Timeout)
	defer cancel()
	if denied < 0 && !unknown {
		// Records of a call that is over only take room: drop them. One
		// left behind (this failed) expires, or is dropped by a later
		// reservation.
		_, _ = s.rdb.Pipelined(after, func(p redis.Pipeliner) error {
			for _, g := range groups {
				for _, k := range g.keys {
					p.HDel(after, k, "r:"+token)
				}
			}
			return nil
		})
		return tightest(limits, groups, replies, nil), nil
	}
	var back []*gcraGroup
	for i, g := range groups {
		switch {
		case errs[i] != nil:
			// The script may yet run: leave a mark that stops it.
			back = append(back, &gcraGroup{keys: g.keys, args: []any{token, keep}})
		case replies[i].allowed():
			back = append(back, &gcraGroup{keys: g.keys, args: []any{token, 0}})
		}
	}
	if err := firstErr(s.evalGroups(after, gcraRefundArgs, back, nil)); err != nil {
		// The tokens stay taken until they come back by themselves.
		s.logFailure(ctx, "ratelimit", key, fmt.Errorf("give back a reservation: %w", err))
	}
	if denied >= 0 {
		return tightest(limits, groups, replies, errs), nil
	}
	return RateLimitResult{}, firstErr(errs)
}

// tightest combines the replies of groups into AllowAll's result: the
// denial that keeps the request waiting longest, or else the limit with
// the fewest tokens left (the one that fills up last among equals).
// Groups with an error in errs are left out.
func tightest(limits []KeyLimit, groups []*gcraGroup, replies []gcraReply, errs []error) RateLimitResult {
	best := -1
	for i := range replies {
		if errs != nil && errs[i] != nil {
			continue
		}
		r := &replies[i]
		if best < 0 {
			best = i
			continue
		}
		b := &replies[best]
		switch {
		case r.allowed() != b.allowed():
			if !r.allowed() {
				best = i
			}
		case !r.allowed():
			if r[2] > b[2] {
				best = i
			}
		case r[1] < b[1] || (r[1] == b[1] && r[3] > b[3]):
			best = i
		}
	}
	r := &replies[best]
	return r.result(limits[groups[best].which[r.index()]].Limit)
}

// firstErr returns the first error in errs, if any.
func firstErr(errs []error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// scriptCmd returns the command that runs a script (EVALSHA with its SHA,
// or EVAL with its source as body) on keys with args. A once command is
// never sent again by go-redis after it may have run (see noRetryCmd).
func scriptCmd(ctx context.Context, name string, body any, keys []string, args []any, once bool) redis.Cmder {
	a := make([]any, 0, 3+len(keys)+len(args))
	a = append(a, name, body, len(keys))
	for _, k := range keys {
		a = append(a, k)
	}
	a = append(a, args...)
	if once {
		c := &noRetryCmd{Cmd: *redis.NewCmd(ctx, a...)}
		c.SetFirstKeyPos(3)
		return c
	}
	c := redis.NewCmd(ctx, a...)
	c.SetFirstKeyPos(3)
	return c
}

// evalOnce runs script once on keys with args, as runOnce does for one
// key, and stores its integer reply in reply.
func (s *Service) evalOnce(ctx context.Context, script luaScript, keys []string, reply []int64, args []any) error {
	cmd := scriptCmd(ctx, "evalsha", script.sha, keys, args, true)
	err := s.rdb.Process(ctx, cmd)
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		cmd = scriptCmd(ctx, "eval", script.src, keys, args, true)
		err = s.rdb.Process(ctx, cmd)
	}
	if err != nil {
		return err
	}
	return scriptInts(cmd, reply)
}

// evalGroups runs script once per group, all in one pipeline (which a
// cluster client sends to the nodes in parallel), go-redis sending a call
// again after a lost reply: the scripts must be safe to repeat. Calls
// that Redis answered NOSCRIPT (they did not run) are sent again as EVAL.
// It stores each reply in replies (when not nil) and returns each call's
// error.
func (s *Service) evalGroups(ctx context.Context, script luaScript, groups []*gcraGroup, replies []gcraReply) []error {
	cmds := make([]redis.Cmder, len(groups))
	send := func(name string, body any, which []int) {
		_, _ = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, i := range which {
				cmds[i] = scriptCmd(ctx, name, body, groups[i].keys, groups[i].args, false)
				_ = p.Process(ctx, cmds[i])
			}
			return nil
		})
	}
	all := make([]int, len(groups))
	for i := range all {
		all[i] = i
	}
	send("evalsha", script.sha, all)
	var again []int
	for i, c := range cmds {
		if err := c.Err(); err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
			again = append(again, i)
		}
	}
	if len(again) > 0 {
		send("eval", script.src, again)
	}
	errs := make([]error, len(groups))
	for i, c := range cmds {
		errs[i] = c.Err()
		if errs[i] == nil && replies != nil {
			errs[i] = scriptInts(c, replies[i][:])
		}
	}
	return errs
}

package redisservice

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// Scripts that must not run twice (those that count) are sent by runOnce:
// EVALSHA, then EVAL only after NOSCRIPT, never again after a timeout or
// a broken connection. Each script is a redis.NewScript package variable
// next to the Go that calls it. The session scripts are safe to send
// again (they are idempotent, or carry a write token: sessiontoken.go),
// so they go through redis.Script.Run and go-redis's own retries.

// luaScript is a Lua script as command arguments: its SHA and source,
// converted to interface values once rather than on every call.
type luaScript struct {
	sha, src any
}

// scriptArgs returns script, whose source is src, as command arguments.
func scriptArgs(script *redis.Script, src string) luaScript {
	return luaScript{sha: script.Hash(), src: src}
}

// runOnce runs script on one key with args and stores its reply, which
// must be len(reply) integers, in reply. The script is sent at most once
// for each time it may run: EVALSHA first, then EVAL only if Redis
// answered NOSCRIPT (the script did not run), never again after a timeout
// or a broken connection.
func (s *Service) runOnce(ctx context.Context, script luaScript, key string, reply []int64, args ...any) error {
	cmd := newNoRetryCmd(ctx, "evalsha", script.sha, key, args)
	err := s.process(ctx, cmd)
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		// EVAL also loads the script, so later calls find it by SHA again.
		cmd = newNoRetryCmd(ctx, "eval", script.src, key, args)
		err = s.process(ctx, cmd)
	}
	if err != nil {
		return err
	}
	return scriptInts(cmd, reply)
}

// runScript runs script on keys with args, as [redis.Script.Run] does
// (EVALSHA, then EVAL after NOSCRIPT), through the fast path. go-redis
// may send it again after a lost reply: script must be safe to repeat.
func (s *Service) runScript(ctx context.Context, script *redis.Script, keys []string, args ...any) (any, error) {
	a := make([]any, 0, 3+len(keys)+len(args))
	a = append(a, "evalsha", script.Hash(), len(keys))
	for _, k := range keys {
		a = append(a, k)
	}
	cmd := redis.NewCmd(ctx, append(a, args...)...)
	cmd.SetFirstKeyPos(3)
	err := s.process(ctx, cmd)
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		// Rare (the first call, or after SCRIPT FLUSH): EVAL loads it.
		return script.Eval(ctx, s.rdb, keys, args...).Result()
	}
	if err != nil {
		return nil, err
	}
	return cmd.Val(), nil
}

// noRetryCmd is a command that go-redis must not send a second time: its
// NoRetry makes both [redis.Client] and [redis.ClusterClient] return the
// first attempt's error instead of retrying after a read timeout or a
// broken connection, when the command may already have run.
type noRetryCmd struct {
	redis.Cmd
}

// NoRetry reports true: a script that counts must not run twice.
func (*noRetryCmd) NoRetry() bool { return true }

// newNoRetryCmd builds an EVAL or EVALSHA command of body on key with
// args, in one allocation besides its argument list.
func newNoRetryCmd(ctx context.Context, name string, body any, key string, args []any) *noRetryCmd {
	a := make([]any, 0, 4+len(args))
	a = append(a, name, body, 1, key)
	a = append(a, args...)
	c := &noRetryCmd{Cmd: *redis.NewCmd(ctx, a...)}
	c.SetFirstKeyPos(3)
	return c
}

// scriptInts stores the reply of cmd, which must be len(reply) integers,
// in reply.
func scriptInts(cmd redis.Cmder, reply []int64) error {
	c, ok := cmd.(interface{ Slice() ([]any, error) })
	if !ok {
		return fmt.Errorf("%w: script command %T", ErrDecode, cmd)
	}
	vals, err := c.Slice()
	if err != nil {
		return err
	}
	if len(vals) != len(reply) {
		return fmt.Errorf("%w: script reply has %d values, want %d", ErrDecode, len(vals), len(reply))
	}
	for i, v := range vals {
		n, ok := v.(int64)
		if !ok {
			return fmt.Errorf("%w: script reply value %d is %T, want an integer", ErrDecode, i, v)
		}
		reply[i] = n
	}
	return nil
}

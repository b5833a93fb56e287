package redisservice

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// Del deletes keys and returns how many existed. On a single node it is
// one DEL; on Redis Cluster, where keys may live in different slots, one
// pipelined DEL per key, one round trip per node. Deleting no keys is a
// no-op. On error it returns 0.
func (s *Service) Del(ctx context.Context, keys ...string) (int64, error) {
	const op = "del"
	for _, k := range keys {
		if err := s.checkWriteKey(k); err != nil {
			return 0, invalid(op, k, err)
		}
	}
	if len(keys) == 0 {
		return 0, nil
	}
	return call(s, ctx, op, firstKey(keys), func(ctx context.Context) (int64, error) {
		return s.deleteKeys(ctx, false, s.keys(keys))
	})
}

// deleteKeys deletes keys, given as stored (with the prefix), with DEL,
// or UNLINK when unlink is set, and returns how many existed. On a single
// node it is one command; on Redis Cluster, where the keys may lie in
// different slots, one pipelined single-key command per key, one round
// trip per node. When the pipeline fails, the count is the sum of the
// replies that arrived: a lower bound. No keys is a no-op.
func (s *Service) deleteKeys(ctx context.Context, unlink bool, keys []string) (int64, error) {
	if len(keys) == 0 {
		return 0, nil
	}
	if !s.cluster || len(keys) == 1 {
		if unlink {
			return s.rdb.Unlink(ctx, keys...).Result()
		}
		return s.rdb.Del(ctx, keys...).Result()
	}
	cmds, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range keys {
			if unlink {
				p.Unlink(ctx, k)
			} else {
				p.Del(ctx, k)
			}
		}
		return nil
	})
	var n int64
	for _, c := range cmds {
		n += c.(*redis.IntCmd).Val()
	}
	return n, err
}

// MGet returns the string values of the keys that exist; missing keys,
// and keys holding another type (a hash, a list), are absent from the
// map. The map is never nil, also on error. On a single node it is one
// MGET; on Redis Cluster one pipelined GET per key, one round trip per
// node.
func (s *Service) MGet(ctx context.Context, keys ...string) (map[string]string, error) {
	const op = "mget"
	if err := checkKeys(keys); err != nil {
		return map[string]string{}, invalid(op, firstKey(keys), err)
	}
	if len(keys) == 0 {
		return map[string]string{}, nil
	}
	vals, err := call(s, ctx, op, firstKey(keys), func(ctx context.Context) ([]any, error) {
		if !s.cluster {
			return s.rdb.MGet(ctx, s.keys(keys)...).Result()
		}
		cmds, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, k := range keys {
				p.Get(ctx, s.key(k))
			}
			return nil
		})
		if err != nil && !absent(err) {
			return nil, err
		}
		vals := make([]any, len(cmds))
		for i, c := range cmds {
			switch v, err := c.(*redis.StringCmd).Result(); {
			case err == nil:
				vals[i] = v
			case !absent(err):
				return nil, err
			}
		}
		return vals, nil
	})
	out := make(map[string]string, len(vals))
	if err != nil {
		return out, err
	}
	for i, v := range vals {
		if str, ok := v.(string); ok {
			out[keys[i]] = str
		}
	}
	s.stats.hits.Add(uint64(len(out)))
	s.stats.misses.Add(uint64(len(keys) - len(out)))
	return out, nil
}

// absent reports whether err is a GET's answer for a key that MGET would
// answer nil for: no such key, or a value that is not a string.
func absent(err error) bool {
	return err == redis.Nil || redis.HasErrorPrefix(err, "WRONGTYPE") //nolint:errorlint // a miss is redis.Nil itself
}

// MSet stores every value in values. Without options on a single node it
// is one atomic MSET. With [WithTTL] or [KeepTTL], or on Redis Cluster, it
// is one pipelined SET per key, sent in one round trip (per node): each
// key is written atomically, but another client may see some keys written
// before others. [NX] and [XX] are rejected with [ErrInvalidArgument],
// since MSet could not say which keys were written. Every key, value (as
// for [Service.Set]) and option is checked before anything is sent.
func (s *Service) MSet(ctx context.Context, values map[string]any, opts ...SetOption) error {
	const op = "mset"
	var first string
	pairs := make([]any, 0, 2*len(values)) // key as stored, value as written
	for k, v := range values {
		if err := s.checkWriteKey(k); err != nil {
			return invalid(op, k, err)
		}
		v, err := writable(v)
		if err != nil {
			return invalid(op, k, err)
		}
		first = k
		pairs = append(pairs, s.key(k), v)
	}
	o, err := buildSetOptions(opts)
	if err != nil {
		return invalid(op, first, err)
	}
	if o.nx || o.xx {
		return invalid(op, first, fmt.Errorf("%w: NX and XX do not apply to MSet", ErrInvalidArgument))
	}
	if len(values) == 0 {
		return nil
	}
	_, err = call(s, ctx, op, first, func(ctx context.Context) (struct{}, error) {
		if !s.cluster && o == (setOptions{}) {
			return struct{}{}, s.rdb.MSet(ctx, pairs...).Err()
		}
		args := o.args()
		_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i := 0; i < len(pairs); i += 2 {
				p.SetArgs(ctx, pairs[i].(string), pairs[i+1], args)
			}
			return nil
		})
		return struct{}{}, err
	})
	return err
}

// checkKeys rejects an empty key.
func checkKeys(keys []string) error {
	for _, k := range keys {
		if k == "" {
			return ErrInvalidKey
		}
	}
	return nil
}

func firstKey(keys []string) string {
	if len(keys) == 0 {
		return ""
	}
	return keys[0]
}

// keys returns keys with the key prefix, reusing the slice's contents
// when there is no prefix.
func (s *Service) keys(keys []string) []string {
	if s.prefix == "" {
		return keys
	}
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = s.key(k)
	}
	return out
}

package redisservice

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// HSet sets field in the hash at key to value (anything go-redis can
// write, as for [Service.Set]; anything else fails with
// [ErrInvalidArgument] before anything is sent).
func (s *Service) HSet(ctx context.Context, key, field string, value any) error {
	const op = "hset"
	if err := s.checkWriteKey(key); err != nil {
		return invalid(op, key, err)
	}
	value, err := writable(value)
	if err != nil {
		return invalid(op, key, err)
	}
	_, err = call(s, ctx, op, key, func(ctx context.Context) (int64, error) {
		cmd := redis.NewIntCmd(ctx, "hset", s.key(key), field, value)
		if err := s.process(ctx, cmd); err != nil {
			return 0, err
		}
		return cmd.Val(), nil
	})
	return err
}

// HGet returns field of the hash at key and whether it was found. A
// missing key or field is "", false, nil. On error it returns "", false.
func (s *Service) HGet(ctx context.Context, key, field string) (string, bool, error) {
	const op = "hget"
	if key == "" {
		return "", false, invalid(op, key, ErrInvalidKey)
	}
	v, err := call(s, ctx, op, key, func(ctx context.Context) (string, error) {
		cmd := redis.NewStringCmd(ctx, "hget", s.key(key), field)
		if err := s.process(ctx, cmd); err != nil {
			return "", err
		}
		return cmd.Val(), nil
	})
	return lookup(s, v, err)
}

// HGetAll returns every field of the hash at key. The map is never nil:
// it is empty for a missing key and on error.
func (s *Service) HGetAll(ctx context.Context, key string) (map[string]string, error) {
	const op = "hgetall"
	if key == "" {
		return map[string]string{}, invalid(op, key, ErrInvalidKey)
	}
	m, err := call(s, ctx, op, key, func(ctx context.Context) (map[string]string, error) {
		cmd := redis.NewMapStringStringCmd(ctx, "hgetall", s.key(key))
		if err := s.process(ctx, cmd); err != nil {
			return nil, err
		}
		return cmd.Val(), nil
	})
	if m == nil {
		m = map[string]string{}
	}
	if err == nil {
		s.found(len(m) > 0)
	}
	return m, err
}

// HDel removes fields from the hash at key and returns how many existed.
// At least one field is required. On error it returns 0.
func (s *Service) HDel(ctx context.Context, key string, fields ...string) (int64, error) {
	const op = "hdel"
	if err := s.checkWriteKey(key); err != nil {
		return 0, invalid(op, key, err)
	}
	if len(fields) == 0 {
		return 0, invalid(op, key, fmt.Errorf("%w: no fields", ErrInvalidArgument))
	}
	return call(s, ctx, op, key, func(ctx context.Context) (int64, error) {
		args := make([]any, 2, 2+len(fields))
		args[0], args[1] = "hdel", s.key(key)
		for _, f := range fields {
			args = append(args, f)
		}
		cmd := redis.NewIntCmd(ctx, args...)
		if err := s.process(ctx, cmd); err != nil {
			return 0, err
		}
		return cmd.Val(), nil
	})
}

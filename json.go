package redisservice

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
)

// SetJSON stores v as plain JSON text at key, so that any client, the
// original TypeScript service included, can read it. It takes the same
// options and reports the same as [Service.Set]. A v that does not
// marshal fails before anything is sent.
func (s *Service) SetJSON(ctx context.Context, key string, v any, opts ...SetOption) (bool, error) {
	const op = "setjson"
	if err := s.checkWriteKey(key); err != nil {
		return false, invalid(op, key, err)
	}
	o, err := buildSetOptions(opts)
	if err != nil {
		return false, invalid(op, key, err)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return false, invalid(op, key, fmt.Errorf("%w: %w", ErrInvalidArgument, err))
	}
	return s.set(ctx, op, key, b, o)
}

// GetJSON decodes the JSON at key into dst, which must be a non-nil
// pointer, and reports whether it did. A missing key is false, nil and
// leaves dst alone. A value that does not decode into dst (bad JSON, a
// type mismatch, a key of another Redis type) is false with an error
// matching [ErrDecode] or the Redis error; dst may then be partly filled.
func (s *Service) GetJSON(ctx context.Context, key string, dst any) (bool, error) {
	const op = "getjson"
	if key == "" {
		return false, invalid(op, key, ErrInvalidKey)
	}
	if rv := reflect.ValueOf(dst); rv.Kind() != reflect.Pointer || rv.IsNil() {
		return false, invalid(op, key, fmt.Errorf("%w: dst must be a non-nil pointer, not %T", ErrInvalidArgument, dst))
	}
	b, found, err := s.getBytes(ctx, op, key)
	if !found {
		return false, err
	}
	if err := json.Unmarshal(b, dst); err != nil {
		return false, s.fail(ctx, op, key, fmt.Errorf("%w: %w", ErrDecode, err))
	}
	return true, nil
}

// getBytes reads the raw value at key, counting the hit or miss.
func (s *Service) getBytes(ctx context.Context, op, key string) ([]byte, bool, error) {
	b, err := call(s, ctx, op, key, func(ctx context.Context) ([]byte, error) {
		cmd := getCmd(ctx, s.key(key))
		if err := s.process(ctx, cmd); err != nil {
			return nil, err
		}
		return cmd.Bytes()
	})
	return lookup(s, b, err)
}
